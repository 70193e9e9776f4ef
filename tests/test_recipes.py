"""The shipped recipes: loadable by name, what the demo trains, and what the README says of them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from subspaces.pipeline import DEMO_PLANS
from subspaces.training import RECIPES_FOLDER, TrainConfig, TrainError, load_recipe, recipe_names

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_shipped_recipes_load_by_name_and_by_path():
    assert recipe_names() == ["demo", "paper"]
    assert load_recipe("paper") == TrainConfig()  # the dataclass defaults are the paper's
    assert load_recipe(RECIPES_FOLDER / "demo.toml") == load_recipe("demo")
    assert load_recipe("demo").source.endswith("demo.toml")  # errors name the file
    with pytest.raises(TrainError, match="not a shipped recipe \\(demo, paper\\)"):
        load_recipe("no-such-recipe")


def test_the_demo_trains_the_demo_recipe():
    assert DEMO_PLANS["small"].train == load_recipe("demo") == DEMO_PLANS["large"].train


def test_every_key_of_the_recipe_files_is_written_out():
    for name in recipe_names():
        data = tomllib.loads((RECIPES_FOLDER / f"{name}.toml").read_text())
        assert set(data) == set(TrainConfig().to_dict()), name


def test_the_readme_lists_exactly_how_the_demo_recipe_differs_from_the_paper():
    text = README.read_text()
    block = re.search(r"The demo's differs from the paper's in.*?```toml\n(.*?)```", text, re.S)
    assert block, "the README's recipe block is gone"
    listed = tomllib.loads(block.group(1))
    demo, paper = load_recipe("demo").to_dict(), load_recipe("paper").to_dict()
    differing = {key for key in demo if demo[key] != paper[key]}
    assert set(listed) == differing
    assert TrainConfig.from_dict({**paper, **listed}) == load_recipe("demo")  # the values too
