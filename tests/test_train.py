import torch

from ibprune.train import SGDConfig, distillation_loss, evaluate, fit, pick_device, recalibrate_bn, steps_for


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_fit_learns_and_evaluate_measures(digits_net, random_loader):
    loader = random_loader(n=32, batch=8)
    cpu = torch.device("cpu")
    before = fit(digits_net, loader, 1, cpu, SGDConfig(lr=0.0), verbose=False)["loss"]
    stats = fit(digits_net, loader, 60, cpu, SGDConfig(lr=0.05, weight_decay=0.0), verbose=False)
    assert stats["steps"] == 60 and stats["loss"] < before
    assert evaluate(digits_net, loader, cpu) > 0.5  # memorises 32 random labels


def test_stop_ends_a_run_early(digits_net, random_loader):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) == 3

    saved = []
    stats = fit(digits_net, random_loader(n=32, batch=8), 10, torch.device("cpu"), SGDConfig(), stop=stop,
                checkpoint=saved.append, verbose=False)
    assert stats["steps"] == 3 and len(calls) == 3
    assert saved[-1]["step"] == 3  # the state where it stopped is checkpointed, as at a normal end


def test_fractional_epochs(random_loader):
    loader = random_loader(n=32, batch=8)
    assert steps_for(0.5, loader) == 2 and steps_for(2.25, loader) == 9 and steps_for(0, loader) == 0


def test_distillation_loss_is_zero_for_identical_logits():
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits).abs() < 1e-6
    assert distillation_loss(logits, torch.randn(4, 10)) > 0


def test_a_nan_loss_that_persists_stops_training(digits_net, random_loader):
    import pytest

    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(digits_net, random_loader(), 2, torch.device("cpu"), SGDConfig(),
            penalty=lambda: torch.tensor(float("nan")), verbose=False)


def test_recalibrate_bn_restores_statistics(digits_net, random_loader):
    bn = digits_net.features[1]
    bn.running_mean.fill_(100.0)
    recalibrate_bn(digits_net, random_loader(), torch.device("cpu"), max_batches=4)
    assert bn.running_mean.abs().max() < 10 and bn.momentum == 0.1
    assert not digits_net.training
