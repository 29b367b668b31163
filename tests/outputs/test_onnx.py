import onnx
import onnxruntime as ort
import pytest
import torch

from ibprune.errors import ExportMismatchError
from ibprune.outputs.onnx import check_parity, export_onnx, onnx_opset, session


def test_export_is_one_file_with_a_dynamic_batch(digits_net, tmp_path):
    path = export_onnx(digits_net, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no .onnx.data, no temp file left
    assert onnx_opset(path) >= 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = sess.run(None, {sess.get_inputs()[0].name: torch.randn(batch, 1, 8, 8).numpy()})[0]
        assert out.shape == (batch, 10)
    assert check_parity(path, digits_net, torch.randn(1, 1, 8, 8)) < 1e-4


def test_parity_failure_is_loud(digits_net, tmp_path):
    path = export_onnx(digits_net, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    with torch.no_grad():
        digits_net.head.bias.add_(1.0)  # the PyTorch model no longer matches the file
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        check_parity(path, digits_net, torch.randn(1, 1, 8, 8))


def test_parity_is_relative_to_the_output_scale(digits_net, tmp_path):
    """Logits of 1e-6 (as a randomly initialised EfficientNet gives) cannot hide a wrong file under a floor."""
    with torch.no_grad():
        digits_net.head.weight.mul_(1e-6)
        digits_net.head.bias.mul_(1e-6)
    path = export_onnx(digits_net, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert check_parity(path, digits_net, torch.randn(1, 1, 8, 8)) < 1e-10
    with torch.no_grad():
        digits_net.head.bias.add_(1e-7)  # 10 % of the output scale, far below any absolute floor
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        check_parity(path, digits_net, torch.randn(1, 1, 8, 8))


def test_the_same_network_exported_again_is_copied_and_any_change_exports_anew(digits_net, tmp_path, monkeypatch):
    x = torch.randn(1, 1, 8, 8)
    first = export_onnx(digits_net, x, tmp_path / "a.onnx")
    traced = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: traced.append(1) or real(*a, **k))
    copied = export_onnx(digits_net, x, tmp_path / "b.onnx")  # e.g. the original model, in the next budget
    assert not traced and copied.read_bytes() == first.read_bytes()
    with torch.no_grad():
        digits_net.head.bias.add_(1.0)  # another network: traced, and its file is its own
    export_onnx(digits_net, x, tmp_path / "c.onnx")
    assert traced == [1] and check_parity(tmp_path / "c.onnx", digits_net, x) < 1e-4
    export_onnx(digits_net, torch.randn(1, 1, 8, 8), tmp_path / "a.onnx")  # a.onnx now holds the new network
    with torch.no_grad():
        digits_net.head.bias.sub_(1.0)  # the first network again, whose file was overwritten
    export_onnx(digits_net, x, tmp_path / "d.onnx")
    assert len(traced) == 2 and check_parity(tmp_path / "d.onnx", digits_net, x) < 1e-4


def test_a_failed_export_leaves_no_file(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace this")

    with pytest.raises(Exception, match="cannot trace this"):
        export_onnx(Bad(), torch.randn(1, 3), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_session_applies_the_optimisation_level_and_writes_the_optimised_graph(digits_net, tmp_path):
    path = export_onnx(digits_net, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    nodes = {}
    for name, level in (("none", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        sess = session(path, threads=1, level=level, optimized_path=tmp_path / f"{name}.onnx")
        out = sess.run(None, {sess.get_inputs()[0].name: torch.randn(2, 1, 8, 8).numpy()})[0]
        assert out.shape == (2, 10)
        nodes[name] = len(onnx.load(tmp_path / f"{name}.onnx").graph.node)
    assert nodes["all"] < nodes["none"]  # full optimisation fuses (conv + bn + relu), the disabled level does not
