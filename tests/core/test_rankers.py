import pytest
import torch

import ibprune
from ibprune.core.groups import find_groups
from ibprune.core.rankers import CRITERIA, criterion_scores


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_every_channel(digits_net, random_loader, criterion):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    scores = criterion_scores(digits_net, x, groups, criterion, random_loader(), torch.device("cpu"))
    assert {g.name: (g.size,) for g in groups} == {n: tuple(s.shape) for n, s in scores.items()}
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert all(p.grad is None for p in digits_net.parameters())


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "taylor", "lamp", "fpgm"])
def test_scores_are_torch_pruning_importances_of_the_same_group(digits_net, random_loader, criterion):
    import torch.nn.functional as F
    import torch_pruning as tp

    x, loader = torch.randn(1, 1, 8, 8), random_loader()
    _, groups = find_groups(digits_net, x)
    ours = criterion_scores(digits_net, x, groups, criterion, loader, torch.device("cpu"))
    graph = tp.DependencyGraph().build_dependency(digits_net, example_inputs=x)
    importance = {"l1": tp.importance.GroupMagnitudeImportance(p=1), "bn": tp.importance.BNScaleImportance(),
                  "taylor": tp.importance.GroupTaylorImportance(), "l2": tp.importance.GroupMagnitudeImportance(p=2),
                  "lamp": tp.importance.LAMPImportance(), "fpgm": tp.importance.FPGMImportance()}[criterion]
    if criterion == "taylor":
        for xb, yb in loader:
            F.cross_entropy(digits_net(xb), yb).backward()
    modules = dict(digits_net.named_modules())
    for g in groups:
        root = modules[g.name]
        prune = tp.prune_conv_out_channels if isinstance(root, torch.nn.Conv2d) else tp.prune_linear_out_channels
        theirs = importance(graph.get_pruning_group(root, prune, list(range(g.size))))
        assert torch.allclose(ours[g.name], theirs.float(), rtol=1e-5, atol=1e-8), g.name
    assert len({round(float(s.std()), 6) for s in ours.values()}) > 1  # the scores are not a constant


def test_l1_prefers_large_filters(digits_net):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    with torch.no_grad():
        digits_net.features[3].body[0].weight[5].mul_(100.0)
    scores = criterion_scores(digits_net, x, groups, "l1")
    assert int(scores["features.3.body.0"].argmax()) == 5


def test_compress_with_a_baseline_criterion(digits_net, random_loader):
    loader = random_loader()
    val = random_loader(n=1024, batch=128)  # enough near-ties that noisy gates would change some predictions
    result = ibprune.compress(digits_net, loader, val, macs=0.5, criterion="taylor", gate_epochs=1.0,
                              finetune_epochs=0.5, round_to=1, latency_runs=3, bench_batch=4, verbose=False)
    rep = result.report
    assert rep["criterion"] == "taylor" and rep["gates"]["steps"] == 0 and rep["achieved"]["macs"] <= 0.5
    assert rep["accuracy"]["gated"] == rep["accuracy"]["original"]  # no gate phase: the network is untouched
    assert rep["gates"]["information_nats"] is None


def test_unknown_criterion(digits_net):
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    with pytest.raises(ValueError, match="unknown criterion"):
        criterion_scores(digits_net, x, groups, "magic")


def test_a_ranker_of_ones_own_plugs_in_without_a_pipeline_edit(digits_net, random_loader):
    """A new ranking method is one class: here the *smallest* L1 filters are kept, the opposite of L1."""
    from ibprune.core.rankers import L1, NO_GATE_PHASE, Ranking

    class Contrary:
        name, unit, title, trains_gates = "contrary", "negative l1", "negative l1", False

        def rank(self, job):
            found = {k: -v for k, v in L1.scores(job.model, job.example_input, job.groups).items()}
            return Ranking(found, found, dict(NO_GATE_PHASE))

        def settings(self):
            return {"criterion": self.name}

    kw = dict(macs=0.5, finetune_epochs=0.0, round_to=1, latency_runs=3, bench_batch=4, verbose=False)
    ours = ibprune.compress(digits_net, random_loader(), criterion=Contrary(), **kw)
    l1 = ibprune.compress(digits_net, random_loader(), criterion="l1", **kw)
    assert ours.report["criterion"] == "contrary" and ours.report["gates"]["steps"] == 0
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    scores = criterion_scores(digits_net, x, groups, "l1")
    for name, gone in ours.removed.items():  # the filters it removed are L1's largest, L1's own removals its smallest
        if gone and l1.removed.get(name):
            assert scores[name][gone].mean() > scores[name][l1.removed[name]].mean(), name
    assert any(ours.removed.values())


def _sparse_learning(net, loader, **kw):
    """``net`` (a copy) after a sparse-learning ranker's phase, and the ranking it returned."""
    import copy

    from ibprune.core.costs import CostModel
    from ibprune.core.rankers import RankJob, SparseLearning
    from ibprune.pipeline.config import CompressConfig

    torch.manual_seed(0)
    net, x = copy.deepcopy(net), torch.randn(1, 1, 8, 8)
    _, groups = find_groups(net, x)
    job = RankJob(net, groups, CostModel(net, x, groups), x, loader, torch.device("cpu"), 0.5,
                  CompressConfig(macs=0.5).for_model(False), verbose=False)
    return net, SparseLearning("sl", lr=0.05, epochs=2.0, **kw).rank(job)


def _conv_norm(net) -> float:
    return sum(float(m.weight.detach().norm()) for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_sparse_learning_shrinks_the_weights_it_regularises_and_scores_the_result(digits_net, random_loader):
    import torch_pruning as tp

    free, _ = _sparse_learning(digits_net, random_loader(), pruner=tp.pruner.GroupNormPruner, reg=0.0)
    held, ranking = _sparse_learning(digits_net, random_loader(), pruner=tp.pruner.GroupNormPruner, reg=0.05)
    assert _conv_norm(held) < 0.9 * _conv_norm(free)  # the group penalty reached the gradients
    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(held, x)
    expected = criterion_scores(held, x, groups, "l2")
    assert all(torch.equal(ranking.scores[n], expected[n]) for n in expected)  # group L2 of the regularised net


def test_growing_regularisation_grows(digits_net, random_loader):
    import torch_pruning as tp

    flat, _ = _sparse_learning(digits_net, random_loader(), pruner=tp.pruner.GrowingRegPruner, reg=1e-3)
    grown, _ = _sparse_learning(digits_net, random_loader(), pruner=tp.pruner.GrowingRegPruner, reg=1e-3,
                                growths=8, delta_reg=0.02)
    assert _conv_norm(grown) < 0.95 * _conv_norm(flat)


@pytest.mark.parametrize("method", ["depgraph_sl", "greg"])
def test_compress_with_sparse_learning(digits_net, random_loader, method):
    result = ibprune.compress(digits_net, random_loader(), macs=0.5, criterion=method, finetune_epochs=0.5,
                              round_to=1, latency_runs=3, bench_batch=4, verbose=False)
    rep = result.report
    assert rep["criterion"] == method and rep["gates"]["steps"] == 0 and rep["achieved"]["macs"] <= 0.5


FAST = {"finetune_epochs": 0.5, "round_to": 1, "latency_runs": 3, "bench_batch": 4, "verbose": False}


def test_a_criterion_under_ibs_squeeze_removes_what_it_ranks_after_shutting_it(digits_net, random_loader):
    from ibprune.core.costs import CostModel
    from ibprune.core.prune import plan
    from ibprune.core.rankers import L1

    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    removal = plan(L1.scores(digits_net, x, groups), CostModel(digits_net, x, groups), 0.5, groups, 1)[0]
    loader = random_loader(n=256, batch=4)  # 64 steps: enough for the squeeze to shut its channels
    result = ibprune.compress(digits_net, loader, random_loader(n=64, batch=64), macs=0.5, criterion="l1_squeeze",
                              gate_epochs=1.0, **FAST)
    rep = result.report
    assert rep["criterion"] == "l1_squeeze" and rep["gates"]["steps"] > 0
    assert rep["gates"]["still_open_to_remove"] == 0  # the squeeze shut every channel L1's plan removes
    assert rep["gates"]["beta_final"] > 10 * rep["gates"]["beta_explore"]
    # L1's ranking of the dense model decided: its plan is what left
    assert {n: sorted(i) for n, i in result.removed.items() if i} == {n: sorted(i) for n, i in removal.items() if i}
    assert rep["accuracy"]["gated"] != rep["accuracy"]["original"]  # the weights trained meanwhile


def test_the_squeeze_shuts_the_channels_of_the_criterions_plan(digits_net, random_loader):
    from ibprune.core.costs import CostModel
    from ibprune.core.prune import plan
    from ibprune.core.rankers import L1, RankJob, Squeezed
    from ibprune.pipeline.config import CompressConfig

    x, loader = torch.randn(1, 1, 8, 8), random_loader(n=256, batch=4)
    _, groups = find_groups(digits_net, x)
    cost_model = CostModel(digits_net, x, groups)
    cfg = CompressConfig(macs=0.5, gate_epochs=1.0, round_to=1).for_model(False)
    job = RankJob(digits_net, groups, cost_model, x, loader, torch.device("cpu"), 0.5, cfg, verbose=False)
    removal = plan(L1.scores(digits_net, x, groups), cost_model, 0.5, groups, 1)[0]
    Squeezed(L1).rank(job)
    alpha = {n: job.gates[n].alpha().detach() for n in removal}
    assert all(bool((alpha[n][idxs] < 1).all()) for n, idxs in removal.items())  # L1's plan is what shut
    kept = torch.cat([a[[i for i in range(len(a)) if i not in removal[n]]] for n, a in alpha.items()])
    assert float((kept >= 1).float().mean()) > 0.9  # and the channels it keeps stayed open


def test_ib_one_shot_explores_half_the_gate_phase_and_prunes_without_a_squeeze(digits_net, random_loader):
    from ibprune.core.costs import CostModel
    from ibprune.core.rankers import IBRanker, RankJob, ranker
    from ibprune.pipeline.config import CompressConfig

    x, loader = torch.randn(1, 1, 8, 8), random_loader(n=64)
    _, groups = find_groups(digits_net, x)
    job = RankJob(digits_net, groups, CostModel(digits_net, x, groups), x, loader, torch.device("cpu"), 0.5,
                  CompressConfig(macs=0.5, gate_epochs=1.0, round_to=1).for_model(False), verbose=False)
    assert ranker("ib_oneshot") == IBRanker(squeeze=False)
    report = IBRanker(squeeze=False).rank(job).report
    assert report["steps"] == len(loader) // 2 and report["steps_planned"] == len(loader)  # the rest fine-tunes
    assert report["beta_final"] == report["beta_explore"]  # beta never rose: no squeeze


@pytest.mark.parametrize("criterion", ["l1", "random"])  # random: a new ranking every round
def test_a_gradual_criterion_prunes_in_rounds_on_torch_prunings_linear_schedule(digits_net, random_loader,
                                                                               monkeypatch, criterion):
    import ibprune.core.rankers as rankers
    from ibprune.core.costs import CostModel
    from ibprune.core.rankers import Gradual, RankJob
    from ibprune.pipeline.config import CompressConfig

    aims, shut = [], []
    real_plan, real_shut = rankers.plan, rankers.GateSet.shut
    monkeypatch.setattr(rankers, "plan", lambda score, cm, aim, *a: aims.append(aim) or real_plan(score, cm, aim, *a))
    monkeypatch.setattr(rankers.GateSet, "shut", lambda self, removed: shut.append(removed) or real_shut(self, removed))
    x, loader = torch.randn(1, 1, 8, 8), random_loader(n=96)
    _, groups = find_groups(digits_net, x)
    cost_model = CostModel(digits_net, x, groups)
    job = RankJob(digits_net, groups, cost_model, x, loader, torch.device("cpu"), 0.4,
                  CompressConfig(macs=0.4, gate_epochs=1.0, round_to=1).for_model(False), verbose=False)
    before = {k: v.clone() for k, v in digits_net.state_dict().items()}
    ranking = Gradual(rankers.ranker(criterion), rounds=3).rank(job)
    assert aims == pytest.approx([0.8, 0.6, 0.4])  # a fifth of the cost, then two, then the budget's three fifths
    assert ranking.report["steps"] == len(loader) == ranking.report["steps_planned"]
    for earlier, later in zip(shut, shut[1:]):  # a round removes what the one before did, and more
        assert all(set(idxs) <= set(later.get(n, [])) for n, idxs in earlier.items())
    assert real_plan(ranking.scores, cost_model, 0.4, groups, 1)[0] == shut[-1]  # the prune removes the last round's
    assert any(not torch.equal(v, before[k]) for k, v in digits_net.state_dict().items())  # trained between rounds


def test_compress_with_a_gradual_criterion(digits_net, random_loader):
    rep = ibprune.compress(digits_net, random_loader(), macs=0.5, criterion="taylor_iter", gate_epochs=1.0,
                           **FAST).report
    assert rep["criterion"] == "taylor_iter" and rep["gates"]["steps"] > 0 and rep["achieved"]["macs"] <= 0.5


def _widths(groups, seed):
    """Random widths to keep per group, one group left whole."""
    g = torch.Generator().manual_seed(seed)
    keep = {gr.name: int(torch.randint(1, gr.size + 1, (1,), generator=g)) for gr in groups}
    keep[groups[0].name] = groups[0].size
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_an_allocation_is_planned_exactly_keeping_each_groups_best_channels(digits_net, seed):
    from ibprune.core.costs import CostModel
    from ibprune.core.prune import plan
    from ibprune.core.rankers import allocated, allocation_cost

    x = torch.randn(1, 1, 8, 8)
    _, groups = find_groups(digits_net, x)
    cost_model, keep = CostModel(digits_net, x, groups), _widths(groups, seed)
    found = {g.name: torch.randn(g.size) for g in groups}
    removed = plan(allocated(found, keep), cost_model, allocation_cost(cost_model, groups, keep), groups, 1)[0]
    for g in groups:
        worst = torch.argsort(found[g.name], stable=True)[:g.size - keep[g.name]]
        assert sorted(removed.get(g.name, [])) == sorted(worst.tolist()), g.name


def test_an_allocation_beyond_a_groups_width_is_refused():
    from ibprune.core.rankers import allocated

    with pytest.raises(ValueError, match="group a has 4 channels; cannot keep 5"):
        allocated({"a": torch.randn(4)}, {"a": 5})


def test_ib_at_given_widths_squeezes_and_ranks_by_its_own_information(digits_net, random_loader, monkeypatch):
    import ibprune.core.rankers as rankers
    from ibprune.core.costs import CostModel
    from ibprune.core.prune import plan
    from ibprune.core.rankers import L1, Allocated, Gradual, IBRanker, RankJob, allocation_cost
    from ibprune.pipeline.config import CompressConfig

    x, loader = torch.randn(1, 1, 8, 8), random_loader(n=64)
    _, groups = find_groups(digits_net, x)
    cost_model, keep = CostModel(digits_net, x, groups), _widths(groups, 0)
    target = allocation_cost(cost_model, groups, keep)
    job = RankJob(digits_net, groups, cost_model, x, loader, torch.device("cpu"), target,
                  CompressConfig(macs=target, gate_epochs=1.0, round_to=1).for_model(False), verbose=False)
    squeezed, real = [], rankers.train_gates
    monkeypatch.setattr(rankers, "train_gates", lambda *a, **k: squeezed.append(k["ranking"]) or real(*a, **k))
    ranking = Allocated(IBRanker(), keep).rank(job)
    removed = plan(ranking.scores, cost_model, target, groups, 1)[0]
    assert plan(squeezed[0](), cost_model, target, groups, 1)[0] == removed  # the squeeze shut what is cut
    for g in groups:  # the widths given, the channels IB passes the least information through removed
        gone = removed.get(g.name, [])
        assert len(gone) == g.size - keep[g.name], g.name
        info = ranking.information[g.name]
        if gone and len(gone) < g.size:
            assert float(info[gone].max()) <= float(info[[i for i in range(g.size) if i not in gone]].min())
    with pytest.raises(ValueError, match="plans its own rounds"):
        Allocated(Gradual(L1), keep)


def test_an_encoders_allocation_is_pruned_exactly():
    """On a transformers encoder (biased linear layers, heads and FFN units) the allocation's budget lets the
    prune, checked by torch-pruning's count, keep exactly the given widths."""
    pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
    from ibprune.core.costs import CostModel
    from ibprune.core.gates import GateSet
    from ibprune.core.prune import prune_to_budget
    from ibprune.core.rankers import allocated, allocation_cost
    from ibprune.pipeline.stages import working_copy
    from tests.rewrites.test_encoder import padded, tiny

    x = padded()[1:2]
    work = working_copy(tiny(), torch.device("cpu"))
    _, groups = find_groups(work, x)
    cost_model = CostModel(work, x, groups)
    keep = {g.name: g.size - g.size // 4 if "attention" in g.name else g.size // 2 for g in groups}
    found = {g.name: torch.randn(g.size, generator=torch.Generator().manual_seed(3)) for g in groups}
    gates = GateSet(groups).attach(work)
    result = prune_to_budget(work, gates, groups, x, cost_model, allocation_cost(cost_model, groups, keep),
                             round_to=1, importance=allocated(found, keep))
    assert {n: len(idxs) for n, idxs in result.removed.items() if idxs} == {
        g.name: g.size - keep[g.name] for g in groups if keep[g.name] < g.size}


def test_a_balanced_explore_hands_its_kl_weights_to_each_budgets_squeeze(digits_net, random_loader, monkeypatch):
    """IB (balanced by default) rescales the KL weights per unit kind once, in the explore; a sweep's squeeze per
    budget reuses those weights with the explore's beta instead of re-balancing on the explored network."""
    import ibprune.core.rankers as rankers
    from ibprune.core.costs import CostModel
    from ibprune.core.rankers import IBRanker, RankJob, ranker
    from ibprune.pipeline.config import CompressConfig

    x, loader = torch.randn(1, 1, 8, 8), random_loader(n=64)
    _, groups = find_groups(digits_net, x)
    groups[0].unit = "head"  # two unit kinds, as in an encoder
    cost_model = CostModel(digits_net, x, groups)

    def job():
        return RankJob(digits_net, groups, cost_model, x, loader, torch.device("cpu"), 0.5,
                       CompressConfig(macs=0.5, gate_epochs=1.0, round_to=1).for_model(False), verbose=False)

    assert ranker("ib") == IBRanker() and IBRanker().balanced and ranker("ib_unbalanced") == IBRanker(balanced=False)
    explored = IBRanker().explore(job(), 0.5)
    costs = cost_model.channel_costs()
    scale = {g.name: float((explored["kl"][g.name] / costs[g.name]).mean()) for g in groups}
    assert scale[groups[0].name] != pytest.approx(scale[groups[1].name], rel=0.05)  # the kinds were rescaled
    assert scale[groups[1].name] == pytest.approx(scale[groups[-1].name], rel=1e-5)  # one factor per kind
    seen, real = [], rankers.train_gates
    monkeypatch.setattr(rankers, "train_gates", lambda *a, **k: seen.append(k) or real(*a, **k))
    IBRanker(explored=explored).rank(job())
    assert seen[0]["kl"] is explored["kl"] and seen[0]["beta"] == explored["beta"]
