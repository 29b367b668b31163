"""ibprune: compress a pretrained PyTorch model with information-bottleneck gates and structural pruning."""

from ibprune.errors import (
    BudgetError,
    CheckpointError,
    ExportMismatchError,
    IbpruneError,
    InputError,
    PreflightMismatchError,
    PruningMismatchError,
    RecipeError,
    UnsupportedModelError,
)
from ibprune.outputs.compressed import load_compressed
from ibprune.pipeline.check import check_model
from ibprune.pipeline.compress import CompressResult, compress
from ibprune.pipeline.config import CompressConfig
from ibprune.pipeline.sweep import SweepResult, compress_sweep

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "CheckpointError",
    "CompressConfig",
    "CompressResult",
    "ExportMismatchError",
    "IbpruneError",
    "InputError",
    "PreflightMismatchError",
    "PruningMismatchError",
    "RecipeError",
    "SweepResult",
    "UnsupportedModelError",
    "__version__",
    "check_model",
    "compress",
    "compress_sweep",
    "load_compressed",
]
