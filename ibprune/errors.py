"""The errors ibprune raises: each names what is wrong, so a user can act on it."""


class IbpruneError(Exception):
    """Base class of every error ibprune raises on purpose."""


class UnsupportedModelError(IbpruneError):
    """The model holds a layer or an operation that ibprune cannot prune correctly."""


class BudgetError(IbpruneError):
    """The requested budget is malformed or cannot be reached."""


class PruningMismatchError(IbpruneError):
    """The pruned network does not compute what the gated network with those channels shut computes."""


class ExportMismatchError(IbpruneError):
    """onnxruntime's outputs differ from PyTorch's beyond the tolerance."""


class InputError(IbpruneError):
    """The model, its example input or the data do not fit together."""
