"""A compression job: what the CLI flags and a pipeline TOML both describe, and how to run it."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import MISSING, dataclass
from pathlib import Path

from ibprune.data.text import SOURCES
from ibprune.errors import BudgetError, RecipeError
from ibprune.pipeline.config import CompressConfig, _setting, settings_fields


@dataclass(kw_only=True)
class Job(CompressConfig):
    """Everything ``ibprune compress`` needs: a model, data and an output folder, and the ``CompressConfig``
    settings (whose defaults it inherits). Field names are the CLI flags and the recipe keys."""

    model: str = _setting(MISSING, "'torchvision:<name>', 'package.module:factory', or 'hf:<folder>' (a "
                                   "transformers sequence classifier and its tokenizer; the [text] extra)", "model",
                          str)
    weights: str | None = _setting(None, "state dict or checkpoint file (loaded with weights_only=True)", "model",
                                   str)
    num_classes: int | None = _setting(None, "passed to the model factory as num_classes", "model", int)
    trust_checkpoint: bool = _setting(False, "allow weights to be a full pickle (e.g. a saved model object); "
                                             "unpickling runs arbitrary code, so only for files from a source you "
                                             "trust", "model")
    data: str = _setting(MISSING, "'digits'; 'cifar10:<folder>' (the JPEG tarballs, torchvision's "
                                  "cifar-10-batches-py, or train/ + test/ class folders; decoded once, cached); or "
                                  "an ImageFolder root with train/ and val/ (or test/); for an hf: model, "
                                  "'csv:<folder>' (train.csv and test.csv, columns text and label), "
                                  "'20newsgroups' or 'rotten_tomatoes'", "data", str)
    seq_len: int = _setting(128, "text: tokens per example (truncated or padded; the MACs are counted at this "
                                 "length)", "data")
    input_size: int | None = _setting(None, "image side in pixels (required for an ImageFolder)", "data", int)
    batch_size: int = _setting(64, "training and evaluation batch size (under torchrun: the global batch, split "
                                   "evenly over the ranks)", "data")
    workers: int = _setting(2, "data loader processes", "data")
    out: str = _setting(MISSING, "output folder", "output", str)
    macs: float | list[float] | None = _setting(None, "keep at most this fraction of the MACs (a list: a sweep)",
                                                "budget", float, many=True)
    params: float | list[float] | None = _setting(None, "keep at most this fraction of the parameters (a list: "
                                                        "a sweep)", "budget", float, many=True)

    def settings(self) -> dict:
        """The ``compress`` keywords this job sets (its ``CompressConfig`` fields)."""
        return {f.name: getattr(self, f.name) for f in settings_fields()}


#: recipe section -> the Job fields it may hold
SECTIONS = {section: tuple(f.name for f in dataclasses.fields(Job) if f.metadata["section"] == section)
            for section in ("model", "data", "budget", "train", "output")}
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
    fields = {f.name: f for f in dataclasses.fields(Job)}
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
            values[field] = _check_type(path, section, key, value, fields[field].metadata)
    for required in ("model", "data", "out"):
        if required not in values:
            section = next(s for s, fs in SECTIONS.items() if required in fs)
            key = next((k for (s, k), f in _ALIASES.items() if f == required), required)
            raise RecipeError(f"{path}: missing key '{key}' in [{section}]")
    # relative paths in a recipe are relative to the recipe's folder
    if values.get("weights"):
        values["weights"] = _beside(path, values["weights"])
    if values["model"].startswith("hf:") and Path(path.parent, values["model"][3:]).is_dir():
        values["model"] = "hf:" + _beside(path, values["model"][3:])  # else a hub name, or a folder from ~
    prefix, _, rest = values["data"].rpartition(":")
    if values["data"] not in ("digits", *SOURCES[1:]):  # a folder, not a dataset by name
        values["data"] = (prefix + ":" if prefix else "") + _beside(path, rest)
    return Job(**values)


def _beside(recipe: Path, value: str) -> str:
    return value if Path(value).is_absolute() else str(Path(recipe.parent, value))


def _keys(section: str) -> list[str]:
    alias = {f: k for (s, k), f in _ALIASES.items() if s == section}
    return [alias.get(f, f) for f in SECTIONS[section]]


def _check_type(path: Path, section: str, key: str, value, meta: dict):
    """``value`` as the field's ``kind`` (an int where a float is wanted is taken), or a ``RecipeError``."""
    kind = meta["kind"]
    if isinstance(value, list) and meta["many"]:
        return [_check_type(path, section, key, v, {**meta, "many": False}) for v in value]
    accepted = (int, float) if kind is float else kind
    if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
        raise RecipeError(f"{path}: [{section}] {key} must be a {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def run_job(job: Job, verbose: bool = True):
    """Build the model and data a job names, then ``compress`` them; returns the ``CompressResult``."""
    from ibprune.core import distributed
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
    batch = distributed.per_rank_batch(job.batch_size)
    if job.model.startswith("hf:") or job.data.startswith(SOURCES):
        model, train, val = _text_job(job, batch)
    else:
        model = build(job.model, job.num_classes)
        train, val = _image_data(job, batch)
    if job.weights:
        load_weights(model, job.weights, job.trust_checkpoint)
    settings = job.settings()
    if sweep:
        from ibprune.pipeline.sweep import compress_sweep

        budgets = job.macs if isinstance(job.macs, list) else job.params
        for budget in ("macs", "params", "latency"):
            del settings[budget]
        return compress_sweep(model, train, val, budgets=budgets, metric="macs" if job.macs else "params",
                              out_dir=job.out, verbose=verbose, **settings)
    return compress(model, train, val, out_dir=job.out, verbose=verbose, **settings)


def _text_job(job: Job, batch: int):
    """The ``hf:`` model and the text data of a text job, tokenised by the model's own tokenizer."""
    from ibprune.data.text import text_loaders
    from ibprune.models.text import from_pretrained

    if not (job.model.startswith("hf:") and job.data.startswith(SOURCES)):
        raise RecipeError("a text job needs both a Hugging Face model (model = 'hf:<folder>') and text data "
                          "(data = 'csv:<folder>', '20newsgroups' or 'rotten_tomatoes')", settings=("model", "data"))
    model, tokenizer = from_pretrained(job.model[3:], job.num_classes)
    train, val, _ = text_loaders(job.data, tokenizer, job.seq_len, batch, job.seed)
    return model, train, val


def _image_data(job: Job, batch: int):
    """The training and validation loaders of an image job: the digits, CIFAR-10 or an ImageFolder tree."""
    from ibprune.data.loaders import digits_loaders, image_folder_loaders

    if job.data == "digits":
        return digits_loaders(batch, job.seed)
    if job.data.startswith("cifar10:"):
        from ibprune.core.train import pick_device
        from ibprune.data.cifar import cifar10_loaders

        return cifar10_loaders(job.data.split(":", 1)[1], batch, pick_device(job.device), seed=job.seed)[:2]
    if not Path(job.data).is_dir():
        raise FileNotFoundError(f"data folder not found: {job.data} (give a folder or 'digits')")
    if job.input_size is None:
        raise RecipeError("input_size is required for an image folder (e.g. input_size = 224)",
                          settings=("input_size",))
    return image_folder_loaders(job.data, job.input_size, batch, job.workers, job.seed)
