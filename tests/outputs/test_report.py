from ibprune.outputs.report import markdown, summary, write

REP = {
    "schema": 1, "target": {"macs": 0.5},
    "original": {"macs": 2_000_000, "params": 100_000, "onnx_bytes": 400_000, "accuracy": 0.98,
                 "latency_ms": {"batch_1": {"p50": 0.04, "p90": 0.05}, "threads": 2}},
    "compressed": {"macs": 1_000_000, "params": 50_000, "onnx_bytes": 200_000, "accuracy": 0.975,
                   "latency_ms": {"batch_1": {"p50": 0.02, "p90": 0.03}, "threads": 2}},
    "achieved": {"macs": 0.5, "params": 0.5},
    "onnx": {"path": "m.onnx", "max_abs_diff": 1e-6, "opset": 20},
    "pruned_channels": {"conv1": {"kept": 8, "total": 16}},
    "accuracy": {"original": 0.98, "gated": 0.97, "pruned": None, "finetuned": 0.975},
    "gates": {"information_nats": {"conv1": 12.5}},
    "timings_s": {"gates": 1.0}, "environment": {"torch": "2", "device": "cpu", "threads": 2},
}


def test_markdown_reads_at_a_glance(tmp_path):
    md = markdown(REP)
    assert "| MACs | 2.00 M | 1.00 M | 2.00x smaller |" in md
    assert "| accuracy | 98.00 % | 97.50 % | -0.50 pt |" in md
    assert "2.00x faster" in md and "| `conv1` | 8 / 16 | 12.50 |" in md and "| pruned | n/a |" in md
    write(tmp_path, REP)
    assert (tmp_path / "report.md").read_text() == md and (tmp_path / "report.json").is_file()
    assert "original" in summary(REP).splitlines()[0]


def test_markdown_says_where_the_training_steps_went():
    rep = dict(REP, gates={"steps": 210, "steps_planned": 352, "information_nats": {"conv1": 1.0}},
               finetune={"epochs": 2, "steps": 846})
    assert "gate phase 210 of 352 planned; fine-tune 846 (142 the gate phase did not need)." in markdown(rep)
    assert "Training steps" not in markdown(REP)
