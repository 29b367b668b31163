import pytest

from ibprune.recipe import Job, RecipeError, load_recipe


def _write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


GOOD = """
[model]
spec = "ibprune.models:DigitsNet"
num_classes = 10
[data]
source = "digits"
[budget]
macs = 0.5
[train]
gate_epochs = 2
adapt_epochs = 0.5
[output]
dir = "out"
"""


def test_a_recipe_becomes_a_job(tmp_path):
    job = load_recipe(_write(tmp_path, GOOD))
    assert job == Job(model="ibprune.models:DigitsNet", data="digits", out="out", num_classes=10, macs=0.5,
                      gate_epochs=2.0, adapt_epochs=0.5)


def test_the_shipped_recipe_loads():
    job = load_recipe("pipelines/digits.toml")
    assert job.data == "digits" and job.macs == 0.5


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("gate_epochs = 2", "gate_epoch = 2"), "unknown key 'gate_epoch' in \\[train\\]"),
    (GOOD + "\n[extras]\nx = 1\n", "unknown section \\[extras\\]"),
    (GOOD.replace("macs = 0.5", "macs = 'half'"), "\\[budget\\] macs must be a float"),
    (GOOD.replace('dir = "out"', ""), "missing key 'dir' in \\[output\\]"),
    (GOOD.replace("[train]", "[train"), "malformed TOML.*line"),
])
def test_malformed_recipes_name_the_problem(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_write(tmp_path, text))


def test_a_latency_budget_is_one_value(tmp_path):
    job = load_recipe(_write(tmp_path, GOOD.replace("macs = 0.5", "latency = 0.7")))
    assert job.latency == 0.7 and job.macs is None
    with pytest.raises(RecipeError, match="latency must be a float"):
        load_recipe(_write(tmp_path, GOOD.replace("macs = 0.5", "latency = [0.7, 0.5]")))


def test_round_to_is_a_number_or_auto(tmp_path):
    assert load_recipe(_write(tmp_path, GOOD.replace("[train]", '[train]\nround_to = "auto"'))).round_to == "auto"
    assert load_recipe(_write(tmp_path, GOOD.replace("[train]", "[train]\nround_to = 16"))).round_to == 16
    with pytest.raises(RecipeError, match="round_to must be a whole number or 'auto', got 'fast'"):
        load_recipe(_write(tmp_path, GOOD.replace("[train]", "[train]\nround_to = 'fast'")))


def test_missing_recipe(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.toml")


def test_input_paths_are_relative_to_the_recipe(tmp_path):
    text = GOOD.replace('source = "digits"', 'source = "cifar10:data/c10"').replace(
        "num_classes = 10", 'weights = "w.pt"')
    job = load_recipe(_write(tmp_path, text))
    assert job.data == f"cifar10:{tmp_path / 'data/c10'}" and job.weights == str(tmp_path / "w.pt")
    assert job.out == "out"  # outputs stay relative to where ibprune runs


@pytest.mark.parametrize("name", ["cifar10_resnet20", "cifar10_resnet56"])
def test_the_cifar_recipes_load(name):
    from pathlib import Path

    job = load_recipe(f"pipelines/{name}.toml")
    shared = Path("pipelines").resolve().parent.parent / "shared"
    assert Path(job.weights).resolve().parent == (shared / "models" / "cifar10-resnet").resolve()
    prefix, folder = job.data.split(":", 1)
    assert prefix == "cifar10" and Path(folder).resolve() == (shared / "data" / "cifar10-jpeg").resolve()


def test_a_list_of_budgets_is_a_sweep(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[model]\nspec = "m:f"\n[data]\nsource = "digits"\n[budget]\nmacs = [0.7, 0.5]\n'
                    '[output]\ndir = "out"\n')
    assert load_recipe(path).macs == [0.7, 0.5]
    path.write_text(path.read_text().replace("[0.7, 0.5]", '[0.7, "a"]'))
    with pytest.raises(RecipeError, match="macs must be a float"):
        load_recipe(path)


def test_the_minilm_recipe_loads_with_its_dataset_by_name():
    job = load_recipe("pipelines/minilm_20newsgroups.toml")
    assert job.model == "hf:~/.cache/ibprune/text/minilm-20newsgroups" and job.data == "20newsgroups"
    assert job.seq_len == 128 and job.optimizer == "auto" and job.quantize == "int8"


def test_a_local_hf_folder_is_relative_to_the_recipe(tmp_path):
    (tmp_path / "encoder").mkdir()
    text = '[model]\nspec = "hf:encoder"\n[data]\nsource = "rotten_tomatoes"\n[budget]\nmacs = 0.5\n' \
           '[output]\ndir = "out"\n'
    job = load_recipe(_write(tmp_path, text))
    assert job.model == f"hf:{tmp_path / 'encoder'}" and job.data == "rotten_tomatoes"
    hub = load_recipe(_write(tmp_path, text.replace("hf:encoder", "hf:org/model")))
    assert hub.model == "hf:org/model"  # no such folder: a hub name, as given
