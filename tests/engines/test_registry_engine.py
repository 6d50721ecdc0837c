"""A new engine is one module plus one registry line (issue 28): a toy engine, written here and registered in
launcher.registry.ENGINES only, is a recipe choice with its own cross-key rule; `launch plan` plans it with its
config, its memory options and its worker arguments; method limits ask it whether it shards weights. No other
file of the launcher knows it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from launcher import registry
from launcher.cli import main
from launcher.plan import build_plan
from launcher.recipe.load import RecipeError, load_recipe

pytestmark = pytest.mark.unit

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft_tiny.yaml"
TOY = '''
"""A toy engine: shards every weight, one option in the memory table, one rule of its own."""

from launcher.registry import EngineSpec


def check(r, origins, refuse):
    if r["distributed"]["zero"] != 0:
        refuse("distributed.zero", "the toy engine has no ZeRO stages. Fix: set distributed.zero: 0")


SPEC = EngineSpec(
    config=lambda recipe, world_size, dtype, on_gpu: {"toy_shards": world_size},
    memory_options=lambda dist: [(0, "none")],
    trainer_args=lambda plan: {"toy_config": plan["deepspeed"]},
    shards_parameters=lambda dist: True,
    check=check,
)
'''
TOY_RECIPE = ["distributed.engine=toy", "distributed.zero=0", "distributed.nproc_per_node=2"]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy engine's module on the path and its one registry line."""
    (tmp_path / "toy_engine.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ENGINES, "toy", "toy_engine")


def test_an_unregistered_engine_is_refused():
    with pytest.raises(RecipeError, match="distributed.engine.*'toy'.*not one of"):
        load_recipe(RECIPE, ["distributed.engine=toy"])


def test_a_registered_toy_engine_is_a_choice_with_its_own_rules(toy):
    assert load_recipe(RECIPE, TOY_RECIPE)["distributed"]["engine"] == "toy"
    with pytest.raises(RecipeError, match=r"override distributed\.zero=2.*toy engine has no ZeRO stages.*Fix:"):
        load_recipe(RECIPE, ["distributed.engine=toy", "distributed.zero=2"])


def test_the_toy_engine_is_planned_with_its_config_memory_options_and_worker_arguments(toy, capsys):
    plan = build_plan(load_recipe(RECIPE, TOY_RECIPE))
    assert plan["deepspeed"] == {"toy_shards": 2}
    assert [(o["zero"], o["offload"]) for o in plan["memory"]["options"]] == [(0, "none")]
    assert registry.engine_spec("toy").trainer_args(plan) == {"toy_config": {"toy_shards": 2}}
    assert main(["plan", str(RECIPE), *TOY_RECIPE]) == 0
    out = capsys.readouterr().out
    assert "engine: toy" in out and '"toy_shards": 2' in out  # the printed plan shows its engine and config


def test_method_limits_ask_the_engine_whether_it_shards_weights(toy):
    """PiSSA needs whole weights at load: refused under any engine that shards them, the toy one included."""
    with pytest.raises(RecipeError, match="method.variant: pissa cannot run"):
        load_recipe(RECIPE, [*TOY_RECIPE, "method.name=lora", "method.variant=pissa"])
