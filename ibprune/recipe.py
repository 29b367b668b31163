"""A compression job: what the CLI flags and a pipeline TOML both describe, and how to run it."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ibprune.errors import BudgetError, RecipeError
from ibprune.pipeline.config import CompressConfig, _setting, settings_fields


@dataclass(kw_only=True)
class Job(CompressConfig):
    """Everything ``ibprune compress`` needs: a model, data and an output folder, and the ``CompressConfig``
    settings (whose defaults it inherits). Field names are the CLI flags and the recipe keys."""

    model: str
    data: str
    out: str
    weights: str | None = None
    trust_checkpoint: bool = False
    num_classes: int | None = None
    input_size: int | None = None
    batch_size: int = 64
    workers: int = 2
    macs: float | list[float] | None = _setting(None, "keep at most this fraction of the MACs (a list: a sweep)",
                                                "budget", float)
    params: float | list[float] | None = _setting(None, "keep at most this fraction of the parameters (a list: "
                                                        "a sweep)", "budget", float)

    def settings(self) -> dict:
        """The ``compress`` keywords this job sets (its ``CompressConfig`` fields)."""
        return {f.name: getattr(self, f.name) for f in settings_fields()}


#: recipe section -> the Job fields it may hold
SECTIONS = {
    "model": ("model", "weights", "num_classes", "trust_checkpoint"),
    "data": ("data", "input_size", "batch_size", "workers"),
    **{section: tuple(f.name for f in settings_fields(section)) for section in ("budget", "train", "output")},
}
SECTIONS["output"] = ("out", *SECTIONS["output"])
_ALIASES = {("model", "spec"): "model", ("data", "source"): "data", ("output", "dir"): "out"}


def load_recipe(path: str | Path) -> Job:
    """Read a pipeline TOML (sections: model, data, budget, train, output) into a ``Job``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: malformed TOML: {err}") from None
    values: dict = {}
    types = {f.name: f.metadata["kind"].__name__ + (" list[float]" if "list" in str(f.type) else "")
             if "kind" in f.metadata else str(f.type) for f in dataclasses.fields(Job)}
    for section, table in doc.items():
        if section not in SECTIONS:
            raise RecipeError(f"{path}: unknown section [{section}] (expected: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise RecipeError(f"{path}: '{section}' must be a table: [{section}]")
        for key, value in table.items():
            field = _ALIASES.get((section, key), key)
            if field not in SECTIONS[section]:
                raise RecipeError(f"{path}: unknown key '{key}' in [{section}] "
                                  f"(expected: {', '.join(_keys(section))})")
            values[field] = _check_type(path, section, key, value, types[field])
    for required in ("model", "data", "out"):
        if required not in values:
            section = next(s for s, fs in SECTIONS.items() if required in fs)
            key = next((k for (s, k), f in _ALIASES.items() if f == required), required)
            raise RecipeError(f"{path}: missing key '{key}' in [{section}]")
    # relative paths in a recipe are relative to the recipe's folder
    if values.get("weights"):
        values["weights"] = _beside(path, values["weights"])
    prefix, _, rest = values["data"].rpartition(":")
    if values["data"] != "digits":
        values["data"] = (prefix + ":" if prefix else "") + _beside(path, rest)
    return Job(**values)


def _beside(recipe: Path, value: str) -> str:
    return value if Path(value).is_absolute() else str(Path(recipe.parent, value))


def _keys(section: str) -> list[str]:
    alias = {f: k for (s, k), f in _ALIASES.items() if s == section}
    return [alias.get(f, f) for f in SECTIONS[section]]


def _check_type(path: Path, section: str, key: str, value, annotation: str):
    wanted = str(annotation)
    if isinstance(value, list) and "list[float]" in wanted:
        return [_check_type(path, section, key, v, "float") for v in value]
    ok = {"str": str, "int": int, "float": (int, float), "bool": bool}
    base = next(t for t in ("bool", "float", "int", "str") if t in wanted)
    if isinstance(value, bool) and base != "bool" or not isinstance(value, ok[base]):
        raise RecipeError(f"{path}: [{section}] {key} must be a {base}, got {value!r}")
    return float(value) if base == "float" else value


def run_job(job: Job, verbose: bool = True):
    """Build the model and data a job names, then ``compress`` them; returns the ``CompressResult``."""
    from ibprune.data.loaders import digits_loaders, image_folder_loaders
    from ibprune.models import build
    from ibprune.pipeline.compress import compress
    from ibprune.pipeline.config import budget_of
    from ibprune.pipeline.sweep import sweep_budgets
    from ibprune.weights import load_weights

    sweep = isinstance(job.macs, list) or isinstance(job.params, list)
    if not sweep:  # a bad budget fails before any model or data is loaded
        budget_of(job.macs, job.params, job.latency)
    elif job.latency is not None or (job.macs is not None and job.params is not None):
        raise BudgetError("give exactly one budget: a sweep runs over macs or params budgets")
    else:
        sweep_budgets("macs" if job.macs else "params", job.macs or job.params)
    model = build(job.model, job.num_classes)
    if job.weights:
        load_weights(model, job.weights, job.trust_checkpoint)
    if job.data == "digits":
        train, val = digits_loaders(job.batch_size, job.seed)
    elif job.data.startswith("cifar10:"):
        from ibprune.core.train import pick_device
        from ibprune.data.cifar import cifar10_loaders

        train, val, _ = cifar10_loaders(job.data.split(":", 1)[1], job.batch_size, pick_device(job.device),
                                        seed=job.seed)
    else:
        if not Path(job.data).is_dir():
            raise FileNotFoundError(f"data folder not found: {job.data} (give a folder or 'digits')")
        if job.input_size is None:
            raise RecipeError("input_size is required for an image folder (e.g. input_size = 224)",
                              settings=("input_size",))
        train, val = image_folder_loaders(job.data, job.input_size, job.batch_size, job.workers, job.seed)
    settings = job.settings()
    if sweep:
        from ibprune.pipeline.sweep import compress_sweep

        budgets = job.macs if isinstance(job.macs, list) else job.params
        for budget in ("macs", "params", "latency"):
            del settings[budget]
        return compress_sweep(model, train, val, budgets=budgets, metric="macs" if job.macs else "params",
                              out_dir=job.out, verbose=verbose, **settings)
    return compress(model, train, val, out_dir=job.out, verbose=verbose, **settings)
