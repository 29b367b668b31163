import dataclasses
import inspect

import pytest

import ibprune
from ibprune.cli import _parser
from ibprune.core.prune import INT8_FLOOR, auto_block
from ibprune.core.train import OPTIMIZERS, OptimizerConfig
from ibprune.errors import BudgetError, InputError
from ibprune.pipeline.config import CompressConfig, settings_fields
from ibprune.recipe import Job, load_recipe

SETTINGS = [f for f in settings_fields() if f.metadata["section"] != "budget"]


@pytest.mark.parametrize("command", ["compress", "sweep"])
def test_every_cli_default_is_the_configs(command):
    args = _parser().parse_args([command, "--model", "m:f", "--data", "digits", "--macs", "0.5", "--out", "o"])
    for f in SETTINGS:
        assert getattr(args, f.name) == f.default, f.name


def test_every_recipe_default_is_the_configs(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[model]\nspec = "m:f"\n[data]\nsource = "digits"\n[budget]\nmacs = 0.5\n[output]\ndir = "o"\n')
    job = load_recipe(path)
    assert job.settings() == dataclasses.asdict(CompressConfig(macs=0.5))
    recipe_keys = {k for section in ("train", "output") for k in __import__("ibprune.recipe").recipe.SECTIONS[section]}
    assert {f.name for f in SETTINGS} <= recipe_keys  # every setting can be written in a recipe


def test_the_api_has_no_defaults_of_its_own():
    for fn in (ibprune.compress, ibprune.compress_sweep):
        own = set(inspect.signature(fn).parameters) & {f.name for f in settings_fields()}
        assert not own, f"{fn.__name__} repeats {own}"


def test_compress_runs_on_the_configs_defaults(digits_net, random_loader):
    rep = ibprune.compress(digits_net, random_loader(), macs=0.6, verbose=False, latency_runs=3,
                           bench_batch=4).report
    assert rep["finetune"]["lr"] == OPTIMIZERS["sgd"][0] and rep["finetune"]["epochs"] == CompressConfig.finetune_epochs
    assert rep["gates"]["epochs"] == CompressConfig.gate_epochs and rep["criterion"] == CompressConfig.criterion
    assert CompressConfig.round_to == "auto"
    assert all(v["kept"] % auto_block(v["total"]) == 0 for v in rep["pruned_channels"].values())


@pytest.mark.parametrize(("settings", "error", "message"), [
    ({"macs": 0.5, "finetune_epoch": 1.0}, InputError, "unknown setting\\(s\\) finetune_epoch"),
    ({"macs": 0.5, "lr": -1.0}, InputError, "lr must be >= 0"),
    ({"macs": 0.5, "gate_epochs": "2"}, InputError, "gate_epochs must be a float"),
    ({"macs": 0.5, "round_to": 0}, InputError, "round_to must be >= 1"),
    ({"macs": 0.5, "round_to": "fast"}, InputError, "round_to must be a whole number or 'auto'"),
    ({"macs": 0.5, "criterion": "magic"}, ValueError, "unknown criterion"),
    ({"macs": 1.5}, BudgetError, "fraction in \\(0, 1\\)"),
    ({"macs": 0.5, "optimizer": "adam"}, InputError, "optimizer must be auto, sgd or adamw"),
])
def test_bad_settings_are_refused_before_anything_runs(settings, error, message):
    with pytest.raises(error, match=message):
        ibprune.compress(None, None, **settings)


def test_the_optimizer_and_its_defaults_follow_the_model_unless_given():
    assert CompressConfig(macs=0.5).for_model(True).weights() == OptimizerConfig(*OPTIMIZERS["adamw"], "adamw")
    assert CompressConfig(macs=0.5).for_model(False).weights() == OptimizerConfig(*OPTIMIZERS["sgd"], "sgd")
    given = CompressConfig(macs=0.5, optimizer="sgd", lr=0.1).for_model(True)
    assert (given.optimizer, given.lr, given.weight_decay) == ("sgd", 0.1, OPTIMIZERS["sgd"][1])
    with pytest.raises(ValueError, match="for_model"):
        CompressConfig(macs=0.5).weights()


def test_a_job_inherits_every_setting_and_its_default():
    job = Job(model="m:f", data="digits", out="o")
    assert job.settings() == dataclasses.asdict(CompressConfig())
    assert Job(model="m:f", data="digits", out="o", macs=[0.7, 0.5]).macs == [0.7, 0.5]  # a sweep


@pytest.mark.parametrize(("settings", "floor"), [({}, 1), ({"quantize": "int8"}, INT8_FLOOR),
                                                  ({"quantize": "int8", "round_to": 8}, 1)])
def test_auto_widths_keep_16_channels_only_for_an_int8_deployment(settings, floor):
    # onnxruntime's int8 convolution is slower below 16 filters; in fp32 narrower groups still pay
    assert CompressConfig(macs=0.5, **settings).min_channels == floor
