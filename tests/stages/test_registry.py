"""A new stage is one module plus one registry line: a toy stage, written here and registered
in launcher.registry.STAGES only, is a valid recipe choice with its own cross-key rule, is
planned by `launch plan` (its dataset kinds checked), shown by `launch data` in its row format,
and its trainer is what the worker would build. No other file of the launcher knows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher import registry
from launcher.cli import main
from launcher.recipe.load import RecipeError, load_recipe

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sft_tiny.yaml"
TOY = '''
"""A toy stage: SFT rows, one rule of its own, a trainer that is a plain function."""

from launcher.registry import StageSpec


def check(r, origins, refuse):
    if r["data"]["packing"] != "none":
        refuse("data.packing", "the toy stage trains unpacked rows. Fix: set data.packing: none")


def build_trainer(plan, args, model, tokenizer, callbacks):
    return "toy trainer", {}


SPEC = StageSpec(kinds=("sft",), rows="launcher.data.preview:SFT_ROWS", trainer="toy_stage:build_trainer", check=check)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy stage's module on the path and its one registry line."""
    (tmp_path / "toy_stage.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.STAGES, "toy", "toy_stage")


def _plan(capsys, *overrides: str) -> tuple[int, str]:
    code = main(["plan", str(RECIPE), "stage=toy", "distributed.nproc_per_node=1", *overrides])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_unregistered_stage_is_refused():
    with pytest.raises(RecipeError, match="stage.*'toy'.*not one of"):
        load_recipe(RECIPE, ["stage=toy"])


def test_a_registered_toy_stage_is_a_recipe_choice_with_its_own_rules(toy, capsys):
    assert load_recipe(RECIPE, ["stage=toy"])["stage"] == "toy"
    with pytest.raises(RecipeError, match=r"override data\.packing=greedy.*toy stage trains unpacked rows.*Fix:"):
        load_recipe(RECIPE, ["stage=toy", "data.packing=greedy"])
    assert main(["schema"]) == 0
    assert "toy" in json.loads(capsys.readouterr().out)["properties"]["stage"]["enum"]


def test_launch_plan_plans_the_toy_stage_and_checks_its_dataset_kind(toy, capsys):
    code, out = _plan(capsys)
    assert code == 0 and "stage: toy" in out
    code, out = _plan(capsys, "data.datasets=[demo_pref]")  # a preference dataset: the toy stage reads SFT ones
    assert (
        code == 2 and "dataset 'demo_pref' is a preference dataset" in out and "this stage needs an SFT dataset" in out
    )


def test_launch_data_and_the_worker_use_the_toy_stage_spec(toy, capsys):
    assert main(["data", str(RECIPE), "stage=toy", "--preview", "1"]) == 0
    assert "--- example 0:" in capsys.readouterr().out  # its spec's row format: sft examples
    assert registry.TRAINERS["toy"](None, None, None, None, []) == ("toy trainer", {})


TOY_WITH_A_KEY = """
from launcher.registry import Key
from launcher.registry import StageSpec

SPEC = StageSpec(
    kinds=("sft",),
    rows="launcher.data.preview:SFT_ROWS",
    trainer="toy_stage:build_trainer",
    keys={"toy_weight": Key("float", 1.0, "the toy stage's own knob", low=0)},
)
"""
# the registry line in place before the schema is read, as an edit of launcher/registry.py puts it
RECIPE_WITH_TOY = f"""
import sys
from launcher import registry
registry.STAGES["toy"] = "toy_stage"
from launcher.recipe.load import RecipeError, load_recipe
print(load_recipe({str(RECIPE)!r}, ["stage=toy", "train.toy_weight=2.5"])["train"]["toy_weight"])
print(load_recipe({str(RECIPE)!r}, ["stage=toy"])["train"]["toy_weight"])
for overrides in (["stage=toy", "train.toy_weight=-1"], ["train.toy_weight=2"]):
    try:
        load_recipe({str(RECIPE)!r}, overrides)
    except RecipeError as err:
        print(str(err).splitlines()[0])
"""


def test_a_stage_declares_its_own_recipe_keys_in_its_spec(tmp_path):
    """The toy stage's key is a recipe key with its default, range and stage, from its spec alone."""
    (tmp_path / "toy_stage.py").write_text(textwrap.dedent(TOY_WITH_A_KEY))
    proc = subprocess.run(
        [sys.executable, "-c", RECIPE_WITH_TOY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    weight, default, too_low, other_stage = proc.stdout.splitlines()
    assert (weight, default) == ("2.5", "1.0")
    assert "train.toy_weight" in too_low and ">= 0" in too_low
    assert "train.toy_weight" in other_stage and "stage: toy" in other_stage
