import pytest
import torch

from ibprune.core.train import OptimizerConfig, distillation_loss, evaluate, fit, pick_device, recalibrate_bn, steps_for


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_fit_learns_and_evaluate_measures(digits_net, random_loader):
    loader = random_loader(n=32, batch=8)
    cpu = torch.device("cpu")
    before = fit(digits_net, loader, 1, cpu, OptimizerConfig(lr=0.0, weight_decay=5e-4), verbose=False)["loss"]
    stats = fit(digits_net, loader, 60, cpu, OptimizerConfig(lr=0.05, weight_decay=0.0), verbose=False)
    assert stats["steps"] == 60 and stats["loss"] < before
    assert evaluate(digits_net, loader, cpu) > 0.5  # memorises 32 random labels


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_each_optimizer_learns(digits_net, random_loader, algorithm):
    loader, cpu = random_loader(n=32, batch=8), torch.device("cpu")
    before = evaluate(digits_net, loader, cpu)
    fit(digits_net, loader, 60, cpu, OptimizerConfig(0.05 if algorithm == "sgd" else 0.01, 0.0, algorithm),
        verbose=False)
    assert evaluate(digits_net, loader, cpu) > max(0.5, before)
    opt, _ = OptimizerConfig(1e-3, 0.01, algorithm).make(digits_net.parameters(), 10)
    assert type(opt).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[algorithm]


def test_stop_ends_a_run_early(digits_net, random_loader):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) == 3

    saved = []
    stats = fit(digits_net, random_loader(n=32, batch=8), 10, torch.device("cpu"),
                OptimizerConfig(lr=0.01, weight_decay=5e-4), stop=stop, checkpoint=saved.append, verbose=False)
    assert stats["steps"] == 3 and len(calls) == 3
    assert saved[-1]["step"] == 3  # the state where it stopped is checkpointed, as at a normal end


def test_fractional_epochs(random_loader):
    loader = random_loader(n=32, batch=8)
    assert steps_for(0.5, loader) == 2 and steps_for(2.25, loader) == 9 and steps_for(0, loader) == 0


def test_distillation_loss_is_zero_for_identical_logits():
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits).abs() < 1e-6
    assert distillation_loss(logits, torch.randn(4, 10)) > 0


def test_distillation_pulls_the_student_towards_the_teacher_and_scales_with_t_squared():
    teacher, student = torch.randn(4, 10), torch.randn(4, 10, requires_grad=True)
    distillation_loss(student, teacher).backward()
    with torch.no_grad():  # a small step against the gradient brings the soft predictions closer
        closer = student - 0.1 * student.grad
    assert distillation_loss(closer, teacher) < distillation_loss(student.detach(), teacher)
    shift = torch.randn(4, 1)  # logits are defined up to a per-example constant
    assert distillation_loss(student.detach() + shift, teacher) == pytest.approx(
        float(distillation_loss(student.detach(), teacher)), rel=1e-5)
    # Hinton's T^2: at a large temperature the loss tends to the mean squared logit difference / 2 (per class)
    centred = [t - t.mean(1, keepdim=True) for t in (student.detach(), teacher)]
    limit = float(((centred[0] - centred[1]) ** 2).sum(1).mean()) / (2 * 10)
    assert float(distillation_loss(student.detach(), teacher, temperature=100.0)) == pytest.approx(limit, rel=0.02)


def test_a_nan_loss_that_persists_stops_training(digits_net, random_loader):
    import pytest

    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(digits_net, random_loader(), 2, torch.device("cpu"), OptimizerConfig(lr=0.01, weight_decay=5e-4),
            penalty=lambda: torch.tensor(float("nan")), verbose=False)


def test_recalibrate_bn_restores_statistics(digits_net, random_loader):
    """The running statistics become those of what the BN layer sees over the batches (equal-sized batches:
    the mean of the batch means, and of the unbiased batch variances), whatever they were before."""
    bn = digits_net.features[1]
    bn.running_mean.fill_(100.0)
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    recalibrate_bn(digits_net, random_loader(n=32, batch=8), torch.device("cpu"), max_batches=4)
    hook.remove()
    assert len(seen) == 4 and bn.momentum == 0.1 and not digits_net.training
    means = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)
    variances = torch.stack([s.transpose(0, 1).flatten(1).var(1) for s in seen]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert torch.allclose(bn.running_var, variances, rtol=1e-4)
