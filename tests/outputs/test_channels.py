import torch

from ibprune.outputs.channels import plot, profile


def test_profile_sorts_channels_and_marks_the_removed():
    info = {"a": torch.tensor([0.5, 2.0, 0.0, 1.0]), "b": torch.tensor([3.0, 1.0])}
    prof = profile(info, {"a": [2, 0]}, unit="nats")
    a = prof["groups"]["a"]
    assert [c["channel"] for c in a["per_channel"]] == [1, 3, 0, 2]
    assert [c["kept"] for c in a["per_channel"]] == [True, True, False, False]
    assert a["channels"] == 4 and a["kept"] == 2 and a["total"] == 3.5 and a["kept_total"] == 3.0
    assert prof["groups"]["b"]["kept"] == 2 and prof["unit"] == "nats"


def test_plot_writes_one_png(tmp_path):
    prof = profile({"a": torch.rand(16), "b": torch.rand(64), "c": torch.rand(8)}, {"b": list(range(30))})
    path = plot(prof, tmp_path / "information.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["information.png"]  # no temporary file left


def test_a_report_picture_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import torch; "
            "from ibprune.outputs.channels import plot, profile; "
            "plot(profile({'a': torch.rand(4)}, {}), 'p.png'); print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg" and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
