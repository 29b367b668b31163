import pytest
import torch

from ibprune.outputs.benchmark import default_threads, latency, profile
from ibprune.outputs.onnx import export_onnx


def test_profile_reports_size_and_latency(digits_net, tmp_path):
    x = torch.randn(1, 1, 8, 8)
    path = export_onnx(digits_net, x, tmp_path / "m.onnx")
    entry = profile(digits_net, path, x, batch_sizes=(1, 4), runs=5, accuracy=0.5)
    assert entry["macs"] > 0 and entry["params"] == sum(p.numel() for p in digits_net.parameters())
    assert entry["onnx_bytes"] == path.stat().st_size
    assert entry["accuracy"] == 0.5
    assert entry["latency_ms"]["threads"] == default_threads()
    for key in ("batch_1", "batch_4"):
        lat = entry["latency_ms"][key]
        assert 0 < lat["p50"] <= lat["p90"]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_timed_session_runs_on_the_threads_asked_for(digits_net, tmp_path, monkeypatch, threads):
    import ibprune.outputs.benchmark

    opened, real = [], ibprune.outputs.benchmark.session
    monkeypatch.setattr(ibprune.outputs.benchmark, "session",
                        lambda *a, **k: opened.append(real(*a, **k)) or opened[-1])
    x = torch.randn(1, 1, 8, 8)
    path = export_onnx(digits_net, x, tmp_path / "m.onnx")
    lat = latency(path, x, batch=2, threads=threads, warmup=1, runs=3)
    assert set(lat) == {"p50", "p90"}
    entry = profile(digits_net, path, x, batch_sizes=(1,), threads=threads, runs=2)
    assert entry["latency_ms"]["threads"] == threads
    assert len(opened) == 2 and all(s.get_session_options().intra_op_num_threads == threads for s in opened)
