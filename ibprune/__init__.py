"""ibprune: compress a pretrained PyTorch model with information-bottleneck gates and structural pruning."""

from ibprune.api import CompressResult, compress
from ibprune.checkpoint import load_compressed
from ibprune.errors import (
    BudgetError,
    ExportMismatchError,
    IbpruneError,
    PruningMismatchError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "CompressResult",
    "ExportMismatchError",
    "IbpruneError",
    "PruningMismatchError",
    "UnsupportedModelError",
    "__version__",
    "compress",
    "load_compressed",
]
