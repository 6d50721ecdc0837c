"""GaLore, APOLLO, BAdam, Adam-mini and Muon are refused before launch where they cannot work, each refusal naming the
key, the value, the reason and the fix; their arguments are valid only beside them (launcher/recipe/optimizers.py).
How they step is tests/worker/test_optimizer_steps.py."""

from __future__ import annotations

import pytest

from launcher.recipe.load import RecipeError, load_recipe
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

TINY = ROOT / "recipes" / "sft_tiny.yaml"  # LoRA under DeepSpeed ZeRO-2
DDP_FULL = ["distributed.engine=ddp", "method.name=full"]
# each optimizer's section as a recipe that leaves it out gets it: LLaMA-Factory's defaults
LF_DEFAULTS = {
    "galore": {"target": ["all"], "rank": 16, "update_interval": 200, "scale": 2.0, "proj_type": "std"},
    "apollo": {
        "target": ["all"],
        "rank": 16,
        "update_interval": 200,
        "scale": 32.0,
        "proj_type": "std",
        "proj": "random",
        "scale_type": "channel",
        "scale_front": False,
    },
    "badam": {"switch_mode": "ascending", "switch_interval": 50, "start_block": None},
    "muon": {"momentum": 0.95, "ns_steps": 5, "adjust_lr": "match_rms_adamw"},
}


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["train.optimizer=galore_adamw", "method.name=full"], ["distributed.engine: deepspeed", "2-D gradient"]),
        (
            ["train.optimizer=apollo_adamw", "method.name=full", "distributed.engine=fsdp"],
            ["distributed.engine: fsdp", "Fix: set distributed.engine: ddp"],
        ),
        (["train.optimizer=muon", "method.name=full"], ["Newton-Schulz"]),
        (["train.optimizer=adam_mini", "method.name=full", "distributed.engine=fsdp"], ["parameter name"]),
        (["train.optimizer=galore_adamw", "distributed.engine=ddp"], ["method.name: lora", "full or freeze"]),
        (["train.optimizer=adam_mini", "distributed.engine=ddp"], ["method.name: lora"]),
        (["train.optimizer=badam", "distributed.engine=ddp", "method.name=freeze"], ["method.name: full"]),
        (["train.optimizer=badam", *DDP_FULL], ["one process", "distributed.nproc_per_node: 1"]),
        (
            ["train.optimizer=muon", "distributed.engine=ddp", "method.loraplus_ratio=16"],
            ["method.loraplus_ratio", "Fix: remove method.loraplus_ratio"],
        ),
        (["train.galore.rank=4", *DDP_FULL], ["train.galore is only valid with train.optimizer: galore_adamw"]),
    ],
)
def test_an_optimizer_where_it_cannot_work_is_refused(overrides, needles):
    with pytest.raises(RecipeError, match="Fix") as refused:
        load_recipe(TINY, overrides)
    for needle in needles:
        assert needle in str(refused.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.optimizer=galore_adamw", *DDP_FULL],
        ["train.optimizer=apollo_adamw", "distributed.engine=ddp", "method.name=freeze"],
        ["train.optimizer=badam", *DDP_FULL, "distributed.nproc_per_node=1"],
        ["train.optimizer=adam_mini", *DDP_FULL],
        ["train.optimizer=muon", "distributed.engine=ddp"],  # LoRA's matrices are matrices too
    ],
)
def test_an_optimizer_where_it_works_gets_its_defaults(overrides):
    train = load_recipe(TINY, overrides)["train"]
    section = {"galore_adamw": "galore", "apollo_adamw": "apollo"}.get(train["optimizer"], train["optimizer"])
    assert train.get(section) == LF_DEFAULTS.get(section)


def test_the_models_shape_is_checked_before_launch(tmp_path):
    """Adam-mini's heads must split hidden_size evenly (Qwen3's 32 x 128 over 2560 do not); GaLore's and APOLLO's
    targets must name weight matrices of the model."""
    import json

    from launcher.model.builtin import builtin_config_path
    from launcher.plan.preflight import check_optimizer_model

    config = json.loads(builtin_config_path("builtin:tiny-qwen2").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "head_dim": 64}))  # 4 heads of 64 over 128
    unequal = load_recipe(TINY, ["train.optimizer=adam_mini", *DDP_FULL, f"model.path={tmp_path}"])
    with pytest.raises(RecipeError, match="4 heads of 64, hidden size 128"):
        check_optimizer_model(unequal)
    check_optimizer_model(load_recipe(TINY, ["train.optimizer=adam_mini", *DDP_FULL]))  # the tiny model's fit

    targets = ["train.optimizer=apollo_adamw", *DDP_FULL, "train.apollo.target=[q_proj,qkv]"]
    with pytest.raises(RecipeError, match=r"train.apollo.target: \['qkv'\] name no weight matrix"):
        check_optimizer_model(load_recipe(TINY, targets))
    check_optimizer_model(load_recipe(TINY, [*targets[:-1], "train.apollo.target=[q_proj,mlp]"]))
