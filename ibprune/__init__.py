"""ibprune: compress a pretrained PyTorch model with information-bottleneck gates and structural pruning."""

from ibprune.api import CompressResult, compress
from ibprune.checkpoint import load_compressed
from ibprune.config import CompressConfig
from ibprune.dryrun import check_model
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
from ibprune.sweep import SweepResult, compress_sweep

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
