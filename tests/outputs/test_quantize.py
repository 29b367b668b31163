"""INT8 files: static QDQ (and for transformers dynamic) quantization with onnxruntime, checked on data,
fallbacks reported, never hidden."""

import numpy as np
import onnx
import pytest
import torch

import ibprune
from ibprune.data.loaders import digits_loaders
from ibprune.demo import pretrained_digits_net
from ibprune.errors import InputError
from ibprune.outputs import quantize as q
from ibprune.outputs.onnx import export_onnx, session

FAST = dict(macs=0.5, gate_epochs=0.5, finetune_epochs=0.5, latency_runs=3, bench_batch=4, verbose=False)


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    return pretrained_digits_net(), *digits_loaders(64, 0)


def _weight_source(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return producers.get(node.input[1], "initializer")


def test_int8_files_are_qdq_with_per_channel_weights_and_the_edges_can_stay_fp32(digits, tmp_path):
    net, train, _ = digits
    fp32 = export_onnx(net, next(iter(train))[0][:1], tmp_path / "m.onnx")
    calibration = q.calibration_inputs(train, 100)
    assert sum(len(b) for b in calibration) == 100
    model = onnx.load(str(q.quantize_int8(fp32, tmp_path / "m.int8.onnx", calibration)))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(_weight_source(model, n) == "DequantizeLinear" for n in convs)
    init = {i.name: i for i in model.graph.initializer}
    dq = {o: n for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    scale = init[dq[convs[1].input[1]].input[1]]
    assert scale.dims[0] > 1  # one scale per output channel
    kept = onnx.load(str(q.quantize_int8(fp32, tmp_path / "k.int8.onnx", calibration, q.Recipe(keep_edges=True))))
    first = next(n for n in kept.graph.node if n.op_type == "Conv")
    assert _weight_source(kept, first) != "DequantizeLinear"  # the first convolution stays float32
    assert (tmp_path / "k.int8.onnx").stat().st_size > (tmp_path / "m.int8.onnx").stat().st_size


def test_compress_writes_four_models_and_measures_the_files_in_onnxruntime(digits, tmp_path):
    net, train, val = digits
    rep = ibprune.compress(net, train, val, out_dir=tmp_path, quantize="int8", **FAST).report
    # the fp32 files compute what PyTorch does, on the data too
    assert rep["onnx"]["accuracy"] == rep["accuracy"]["finetuned"]
    assert rep["onnx"]["original_accuracy"] == rep["accuracy"]["original"]
    for key in ("original", "compressed"):
        entry = rep["int8"][key]
        assert entry["ok"] and entry["accuracy"] >= entry["fp32_accuracy"] - 0.01
        assert (tmp_path / f"{'model' if key == 'compressed' else 'original'}.int8.onnx").is_file()
        assert entry["onnx_bytes"] < rep[key]["onnx_bytes"] / 2 and entry["latency_ms"]["batch_4"]["p50"] > 0
    assert not rep["notes"]
    md = (tmp_path / "report.md").read_text()
    assert all(row in md for row in ("| original fp32 |", "| original int8 |", "| compressed fp32 |",
                                     "| compressed int8 |"))
    assert "(deployed.png)" in md and (tmp_path / "deployed.png").stat().st_size > 10_000  # the four plotted


def test_an_int8_file_that_loses_too_much_is_flagged_not_hidden(digits, tmp_path, monkeypatch):
    net, train, val = digits
    real = q.onnx_accuracy

    def int8_is_bad(path, loader, threads=None):  # every int8 file scores far below its fp32 file
        return real(path, loader, threads) - (0.5 if str(path).endswith(".int8.onnx") else 0.0)

    monkeypatch.setattr(q, "onnx_accuracy", int8_is_bad)
    rep = ibprune.compress(net, train, val, out_dir=tmp_path, quantize="int8", **FAST).report
    entry = rep["int8"]["compressed"]
    assert not entry["ok"] and len(entry["attempts"]) == len(q.fallbacks())  # every recipe tried, in order
    assert [a["method"] for a in entry["attempts"]][:3] == ["MinMax", "Entropy", "Percentile"]
    assert (tmp_path / "model.int8.onnx").is_file()
    assert any("model.int8.onnx is not verified" in n for n in rep["notes"])
    assert "not verified" in (tmp_path / "report.md").read_text()


def test_without_validation_data_the_int8_file_is_unchecked(digits, tmp_path):
    net, train, _ = digits
    result = q.quantize_checked(export_onnx(net, next(iter(train))[0][:1], tmp_path / "m.onnx"),
                                tmp_path / "m.int8.onnx", q.calibration_inputs(train, 64))
    assert result.accuracy is None and not result.ok and len(result.attempts) == 1


def test_reduce_range_is_a_fallback_only_without_vnni():
    assert not any(r.reduce_range for r in q.fallbacks(vnni=True))
    assert q.fallbacks(vnni=False)[-1].reduce_range


@pytest.mark.parametrize("settings", [{"quantize": "fp16"}, {"int8_tolerance": 1.5}, {"calibration_images": 0}])
def test_bad_quantization_settings_are_refused(digits, settings):
    net, train, _ = digits
    with pytest.raises(InputError):
        ibprune.compress(net, train, **FAST, **settings)


def test_a_transformer_is_quantized_dynamically_first_and_both_recipes_compute_its_function(tmp_path):
    pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
    from ibprune.core.probes import random_like
    from tests.rewrites.test_encoder import padded, tiny

    fp32 = export_onnx(tiny(), padded()[:1], tmp_path / "bert.onnx")
    assert not q.convolutional(fp32) and q.fallbacks(convolutional=False)[0] == q.Recipe("dynamic")
    assert q.convolutional(export_onnx(pretrained_digits_net(), torch.randn(1, 1, 8, 8), tmp_path / "cnn.onnx"))
    x = random_like(padded(), 32, torch.Generator().manual_seed(0)).numpy()  # ids and masks, padding included
    calibration = q.calibration_inputs([(torch.from_numpy(x), None)], 32)
    assert calibration[0].dtype == np.int64  # token ids are not made floats
    want = session(fp32).run(None, {"input": x})[0]
    for recipe in (q.Recipe("dynamic"), q.Recipe("MinMax")):
        path = q.quantize_int8(fp32, tmp_path / f"{recipe.method}.onnx", calibration, recipe)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("DynamicQuantizeLinear" in ops) == (recipe.method == "dynamic")
        got = session(path).run(None, {"input": x})[0]
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95  # int8 rounding, the same function
