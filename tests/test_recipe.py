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
[output]
dir = "out"
"""


def test_a_recipe_becomes_a_job(tmp_path):
    job = load_recipe(_write(tmp_path, GOOD))
    assert job == Job(model="ibprune.models:DigitsNet", data="digits", out="out", num_classes=10, macs=0.5,
                      gate_epochs=2.0)


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


def test_missing_recipe(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.toml")
