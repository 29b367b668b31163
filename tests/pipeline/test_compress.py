import copy
import json

import pytest
import torch
import torchvision

import ibprune
from ibprune.core.prune import auto_block
from ibprune.errors import BudgetError, InputError
from ibprune.pipeline.config import budget_of

FAST = {"gate_epochs": 1.0, "finetune_epochs": 1.0, "latency_runs": 3, "bench_batch": 4, "verbose": False}


def test_compress_end_to_end_on_tiny_data(digits_net, random_loader, tmp_path):
    state = {k: v.clone() for k, v in digits_net.state_dict().items()}
    loader = random_loader()
    result = ibprune.compress(digits_net, loader, loader, macs=0.5, out_dir=tmp_path, round_to=1, **FAST)
    rep = result.report
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "model.onnx", "original.onnx",
                                                    "compressed.pt", "information.json", "information.png",
                                                    "deployed.png"}
    picture = json.loads((tmp_path / "information.json").read_text())
    assert picture["unit"] == "nats" and set(picture["groups"]) == set(rep["pruned_channels"])
    assert "![information per channel](information.png)" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(rep))
    assert rep["schema"] == 1 and rep["target"] == {"macs": 0.5}
    for side in ("original", "compressed"):
        entry = rep[side]
        assert {"macs", "params", "onnx_bytes", "accuracy", "latency_ms"} <= set(entry)
        assert {"batch_1", "batch_4", "threads"} <= set(entry["latency_ms"])
    assert 0.47 <= rep["compressed"]["macs"] / rep["original"]["macs"] <= 0.5
    assert rep["onnx"]["max_abs_diff"] <= 1e-4 and rep["onnx"]["opset"] >= 17
    assert set(rep["timings_s"]) == {"gates", "prune", "finetune", "export", "benchmark"}
    # the steps the gate phase does not need go to the fine-tune: the total is what was asked for
    steps = len(loader)
    assert rep["gates"]["steps_planned"] == steps and rep["gates"]["steps"] <= steps
    assert rep["gates"]["steps"] + rep["finetune"]["steps"] == 2 * steps
    assert {"torch", "device", "threads"} <= set(rep["environment"])
    assert sum(v["kept"] for v in rep["pruned_channels"].values()) < sum(
        v["total"] for v in rep["pruned_channels"].values())
    assert result.model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    # the user's model is untouched
    assert all(torch.equal(v, state[k]) for k, v in digits_net.state_dict().items())
    assert not any(m._forward_pre_hooks for m in digits_net.modules())


def test_int8_widths_under_the_floor_are_noted_in_the_report(digits_net, random_loader):
    # the test CNN's groups are 16 and 32 wide: 0.3 of the MACs needs groups narrower than the 16 channels
    # onnxruntime's int8 convolution runs fast, and the report says so
    result = ibprune.compress(digits_net, random_loader(), macs=0.3, quantize="int8", **FAST)
    assert result.report["achieved"]["macs"] <= 0.3
    assert any("narrower than 16 channels" in n for n in result.report["notes"])
    assert min(v["kept"] for v in result.report["pruned_channels"].values()) < 16


def test_params_budget(digits_net, random_loader):
    loader = random_loader()
    result = ibprune.compress(digits_net, loader, params=0.6, round_to=1, **FAST)
    assert result.report["achieved"]["params"] <= 0.6
    assert result.report["original"]["accuracy"] is None


# MobileNetV2's depthwise groups pass check_model's budget and ONNX checks in tests/test_architectures.py; the
# whole pipeline on it (two exports of it alone take half a minute) runs with `pytest -m slow`
@pytest.mark.parametrize("name", ["resnet18", pytest.param("mobilenet_v2", marks=pytest.mark.slow)])
def test_budget_holds_on_torchvision_models(name, random_loader, tmp_path):
    import onnxruntime as ort

    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    loader = random_loader(shape=(3, 32, 32), n=16, batch=8)
    result = ibprune.compress(model, loader, macs=0.5, out_dir=tmp_path, **FAST)
    achieved = result.report["achieved"]["macs"]
    assert 0.47 <= achieved <= 0.5
    # the shipped file computes what the slim model computes, relative to its own output's scale
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = result.model.cpu().eval()(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - ref).max() <= 1e-4 * abs(ref).max()
    assert all(v["kept"] % auto_block(v["total"]) == 0 for v in result.report["pruned_channels"].values())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one budget"),
    ({"macs": 0.5, "params": 0.5}, "exactly one budget"),
    ({"macs": 1.5}, "fraction in \\(0, 1\\)"),
    ({"params": 0.0}, "fraction in \\(0, 1\\)"),
    ({"macs": 0.5, "latency": 0.5}, "exactly one budget"),
    ({"latency": 1.2}, "latency budget must be a fraction in \\(0, 1\\)"),
])
def test_bad_budgets_are_refused(kwargs, message):
    with pytest.raises(BudgetError, match=message):
        budget_of(kwargs.get("macs"), kwargs.get("params"), kwargs.get("latency"))


def test_same_seed_same_architecture(digits_net, random_loader):
    runs = [ibprune.compress(digits_net, random_loader(), macs=0.5, seed=3, round_to=1, **FAST).report
            for _ in range(2)]
    assert runs[0]["pruned_channels"] == runs[1]["pruned_channels"]
    assert runs[0]["compressed"]["macs"] == runs[1]["compressed"]["macs"]


def test_robustness_section(digits_net, random_loader, tmp_path):
    loader = random_loader()
    rep = ibprune.compress(digits_net, loader, loader, macs=0.6, robustness_eps=0.1, out_dir=tmp_path,
                           **FAST).report
    assert set(rep["robustness"]["models"]) == {"original", "compressed"}
    assert {"clean", "fgsm", "pgd10"} == set(rep["robustness"]["models"]["compressed"])
    assert "## Robustness to small perturbations" in (tmp_path / "report.md").read_text()


def test_distill_from_a_given_teacher(digits_net, random_loader):
    loader = random_loader()
    teacher = copy.deepcopy(digits_net)
    result = ibprune.compress(digits_net, loader, macs=0.5, round_to=1, distill=teacher, **FAST)
    assert result.report["finetune"]["distill"] == "teacher"
    with pytest.raises(InputError, match="teacher's output has shape"):
        ibprune.compress(digits_net, loader, macs=0.5, distill=torch.nn.Sequential(digits_net, torch.nn.Linear(10, 3)),
                         **FAST)
    with pytest.raises(InputError, match="teacher model fails on the example input"):
        ibprune.compress(digits_net, loader, macs=0.5, distill=torch.nn.Linear(3, 10), **FAST)


def test_adapt_first_then_distill_from_the_adapted_model(digits_net, random_loader, monkeypatch):
    import ibprune.pipeline.stages as api

    calls, real_fit = [], api.fit

    def spy(model, *args, **kwargs):
        out = real_fit(model, *args, **kwargs)
        calls.append((kwargs["desc"], {k: v.clone() for k, v in model.state_dict().items()}, kwargs.get("teacher")))
        return out

    monkeypatch.setattr(api, "fit", spy)
    loader = random_loader()
    rep = ibprune.compress(digits_net, loader, loader, macs=0.5, round_to=1, adapt_epochs=1.0, distill=True,
                           **FAST).report
    (desc, adapted, _), (last, _, teacher) = calls[0], calls[-1]
    assert (desc, last) == ("adapt", "finetune")
    # the teacher is the adapted model, not the original
    assert all(torch.equal(teacher.state_dict()[k].cpu(), v) for k, v in adapted.items())
    assert any(not torch.equal(digits_net.state_dict()[k], v) for k, v in adapted.items())
    assert list(rep["accuracy"])[:3] == ["original", "adapted", "gated"]
    assert rep["finetune"]["distill"] == "adapted" and "adapt" in rep["timings_s"]
    with pytest.raises(InputError, match="adapt_epochs must be"):
        ibprune.compress(digits_net, loader, macs=0.5, adapt_epochs=-1, **FAST)


def test_a_budget_no_widths_fit_names_the_coarsest_group(digits_net, random_loader):
    # widths of 16 give the test CNN 1.0, 0.78, 0.73 or 0.62 of its MACs: nothing within 0.03 under 0.95
    result = ibprune.compress(digits_net, random_loader(), macs=0.95, round_to=16, **FAST)
    assert result.report["achieved"]["macs"] == pytest.approx(0.784, abs=1e-3)
    note = next(n for n in result.report["notes"] if "more than 0.03 below" in n)
    step = float(note.rsplit("one block of which is ", 1)[1].split()[0])
    assert "coarsest step is group 'features.7.body." in note and step == pytest.approx(1 - 0.784, abs=1e-3)
