"""onnxruntime's Softmax on rows whose masked entries hold a large negative number, against unmasked rows: why a
padded short text's attention costs more per head than its MACs say (``text_findings.md``, latency section).

One Softmax node over 32 x 12 x 128 x 128 scores (a batch of 32, 12 heads, 128 tokens), 98 of 128 entries per
row set to each mask value, p50 of ``--runs`` runs, interleaved over ``--rounds``, with and without
``session.set_denormal_as_zero``.

Reproduce (quiet machine): python benchmarks/softmax_mask.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULT = Path(__file__).parent / "results" / "softmax_mask.json"
MASKS = {"unmasked": None, "float32 minimum": float(np.finfo(np.float32).min), "-1e4": -1e4, "-inf": -np.inf}


def main() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ibprune.files import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    scores = np.random.default_rng(0).standard_normal((32, 12, 128, 128)).astype(np.float32)
    inputs = {}
    for name, value in MASKS.items():
        inputs[name] = scores.copy()
        if value is not None:
            inputs[name][..., 30:] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "softmax.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        sessions = {}
        for daz in ("0", "1"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.add_session_config_entry("session.set_denormal_as_zero", daz)
            sessions[daz] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        times: dict = {(d, m): [] for d in sessions for m in inputs}
        for _ in range(args.rounds):
            for (daz, mask), spent in times.items():
                for _ in range(args.runs):
                    start = time.perf_counter()
                    sessions[daz].run(None, {"x": inputs[mask]})
                    spent.append(1e3 * (time.perf_counter() - start))
    out = {f"denormal_as_zero={d}": {m: float(np.median(times[(d, m)])) for m in inputs} for d in sessions}
    write_json(RESULT, {"p50_ms": out, "shape": list(scores.shape), "masked_per_row": 98, "threads": args.threads,
                        "rounds": args.rounds, "runs": args.runs, "command": " ".join(sys.argv),
                        "onnxruntime": ort.__version__, "machine": platform.machine()})
    print(out)


if __name__ == "__main__":
    main()
