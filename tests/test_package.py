import subprocess
import sys


def test_importing_ibprune_changes_nothing_global():
    """No warnings filter, no torch-pruning registration, no matplotlib backend switch at import (the libraries
    it uses, some of which add filters of their own when imported, are imported first)."""
    code = ("import warnings, matplotlib, torch_pruning as tp\n"
            "import numpy, onnx, onnxruntime, onnxscript, sklearn, sympy, torch, torch.onnx, torchvision, tqdm\n"
            "before = (list(warnings.filters), dict(tp.utils.op_counter.MODULES_MAPPING), matplotlib.get_backend())\n"
            "import ibprune, ibprune.core.costs, ibprune.core.groups, ibprune.outputs.channels\n"
            "import ibprune.pipeline.sweep\n"
            "after = (list(warnings.filters), dict(tp.utils.op_counter.MODULES_MAPPING), matplotlib.get_backend())\n"
            "assert before == after, [b == a for b, a in zip(before, after)]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_counting_lends_the_attention_counter_and_takes_it_back():
    import torch
    import torch_pruning as tp

    from ibprune.core.costs import count
    from ibprune.rewrites.attention import Attend, split_heads
    from tests.rewrites.test_attention import TinyTransformer

    model = TinyTransformer().eval()
    split_heads(model)
    x = torch.randn(1, 1, 8, 8)
    assert Attend not in tp.utils.op_counter.MODULES_MAPPING
    with_attention, _ = count(model, x)
    assert Attend not in tp.utils.op_counter.MODULES_MAPPING
    without, _ = tp.utils.count_ops_and_params(model, x)
    assert with_attention > without  # the matmuls were counted inside count() only


def test_every_function_fits_on_a_screen():
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "ibprune"
    long = [f"{path.relative_to(root)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in root.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, long
