"""The errors ibprune raises: each names what is wrong, so a user can act on it."""


class IbpruneError(Exception):
    """Base class of every error ibprune raises on purpose.

    ``settings``: the settings (their Python names, e.g. ``"resume"``) that act on it; the library's message
    names them as keywords, the CLI adds the flags."""

    def __init__(self, *args, settings: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.settings = tuple(settings)


class UnsupportedModelError(IbpruneError):
    """The model holds a layer or an operation that ibprune cannot prune correctly."""


class BudgetError(IbpruneError):
    """The requested budget is malformed or cannot be reached."""


class PruningMismatchError(IbpruneError):
    """The pruned network does not compute what the gated network with those channels shut computes.

    ``groups``: the channel groups whose removal alone breaks the function (empty when only their combination
    does, or when the error was raised before they were searched for); ``layer``: where the difference first
    showed (a layer's name or ``"output"``; None when the pruned model failed to run)."""

    groups: list[str] = []
    layer: str | None = None


class PreflightMismatchError(UnsupportedModelError, PruningMismatchError):
    """Before any training, a trial prune changed what the model computes: ibprune cannot prune it correctly."""


class ExportMismatchError(IbpruneError):
    """onnxruntime's outputs differ from PyTorch's beyond the tolerance."""


class InputError(IbpruneError):
    """The model, its example input or the data do not fit together."""


class CheckpointError(IbpruneError):
    """A weights file is missing, unreadable, or does not fit the model."""


class RecipeError(IbpruneError):
    """A pipeline recipe is malformed."""
