"""Engine fsdp before launch (issue 25): the plan holds FSDP2's settings for TrainingArguments, distributed.zero
reads 0 (FSDP shards everything itself), the memory table lists FSDP's options, and what cannot run under it is
refused with the reason and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import main
from launcher.engines.fsdp_spec import fsdp_config
from launcher.model.shape import model_shape
from launcher.plan import build_plan
from launcher.plan.memory import GIB, estimate_option, parameter_split
from launcher.recipe.load import RecipeError, load_recipe
from launcher.registry import engine_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "sft_tiny.yaml"
FSDP = ["distributed.engine=fsdp", "distributed.nproc_per_node=2"]


def test_the_plan_holds_fsdp2_settings_and_no_deepspeed_config():
    plan = build_plan(load_recipe(TINY, FSDP))
    assert plan["recipe"]["distributed"]["zero"] == 0  # the recipe's zero: 2 is DeepSpeed's, dropped with the engine
    assert plan["deepspeed"] is None
    assert plan["fsdp"] == {
        "version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_offload": False,
        "cpu_ram_efficient_loading": False,
    }
    assert engine_spec("fsdp").trainer_args(plan) == {"fsdp": True, "fsdp_config": plan["fsdp"]}
    offloaded = load_recipe(TINY, [*FSDP, "distributed.offload=all"])
    assert fsdp_config(offloaded, 2, "bf16", on_gpu=True)["cpu_offload"] is True
    # CPUOffloadPolicy pins host memory, which fails without an accelerator; on a CPU-only machine the host is
    # the device, so the plan offloads nothing (FSDP2 + offload all crashed in fully_shard there)
    assert build_plan(offloaded)["fsdp"]["cpu_offload"] is False


def test_launch_plan_shows_the_fsdp_config_and_its_memory_options(capsys):
    assert main(["plan", str(TINY), *FSDP]) == 0
    out = capsys.readouterr().out
    assert "# fsdp (FSDP2): TrainingArguments.fsdp_config" in out and '"state_dict_type": "SHARDED_STATE_DICT"' in out
    table = out.split("# memory estimate", 1)[1]
    assert "FSDP2 " in table and "<- plan" in table.split("FSDP2 + offload all")[0]
    assert "ZeRO-" not in table


def test_fsdp_is_counted_as_sharded_like_zero3_without_deepspeeds_buffers():
    """Parameters, gradients and optimizer state over the world; no fp32 master copy on top of fp32 weights."""
    recipe = load_recipe(TINY, [*FSDP, "method={name: full}"])
    shape, _ = model_shape(recipe["model"]["path"])
    fsdp = estimate_option(recipe, shape, 0, "none", 2, "cuda", "fp32")
    one = estimate_option(recipe, shape, 0, "none", 1, "cuda", "fp32")
    assert fsdp.label == "FSDP2"
    assert fsdp.optimizer_gb == pytest.approx(one.optimizer_gb / 2)
    assert fsdp.grads_gb == pytest.approx(one.grads_gb / 2)
    assert one.params_gb / 2 < fsdp.params_gb < one.params_gb  # the shard plus the units gathered at a time
    zero3 = estimate_option(
        load_recipe(TINY, ["method={name: full}", "distributed.zero=3"]), shape, 3, "none", 2, "cuda", "bf16"
    )
    fsdp_bf16 = estimate_option(recipe, shape, 0, "none", 2, "cuda", "bf16")
    assert fsdp_bf16.optimizer_gb < zero3.optimizer_gb  # ZeRO's fp32 master copy is FSDP's fp32 shard itself


def test_on_cpu_adams_temporary_is_one_parameter_shard_not_the_whole_model():
    """torch's AdamW steps CPU tensors one by one (no foreach): its sqrt temporary is the largest shard's. On CUDA
    (foreach) and on DeepSpeed's flat buffers it covers every trained parameter."""
    recipe = load_recipe(TINY, [*FSDP, "method={name: full}"])
    shape, _ = model_shape(recipe["model"]["path"])
    _, trainable = parameter_split(shape, recipe["method"])
    n, largest = sum(t.numel for t in trainable), max(t.numel for t in trainable)
    adam_states = 8 * n
    on_cpu = estimate_option(recipe, shape, 0, "none", 2, "cpu", "fp32")
    on_cuda = estimate_option(recipe, shape, 0, "none", 2, "cuda", "fp32")
    assert on_cpu.optimizer_gb * GIB == pytest.approx((adam_states + 4 * largest) / 2)
    assert on_cuda.optimizer_gb * GIB == pytest.approx((adam_states + 4 * n) / 2)
    zero3 = load_recipe(TINY, ["method={name: full}", "distributed.zero=3"])
    assert (
        estimate_option(zero3, shape, 3, "none", 2, "cpu", "fp32").optimizer_gb
        == estimate_option(zero3, shape, 3, "none", 2, "cuda", "fp32").optimizer_gb
    )


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["distributed.zero=3"], "distributed.zero", "is a DeepSpeed ZeRO stage"),
        (["distributed.offload=optimizer"], "distributed.offload", "offloads parameters, gradients and optimizer"),
        (["method.name=qlora"], "model.quantization", "fully_shard cannot turn into DTensors"),
        (["method={name: prefix}", "train.gradient_checkpointing=false"], "distributed.engine", "prefix"),
        (["method.variant=pissa"], "distributed.engine: fsdp", "pissa"),
        (["stage=ppo", "train.reward_model=outputs/rm", "data.datasets=[demo_ppo]"], "stage: ppo", "deepspeed"),
        (["distributed.launcher=deepspeed"], "distributed.launcher", "torchrun or accelerate"),
        (
            ["distributed.zero=auto", "distributed.offload=all"],
            "distributed.offload",
            "chosen by distributed.zero: auto",
        ),
    ],
)
def test_what_fsdp_cannot_run_is_refused_with_a_fix(overrides, key, words):
    with pytest.raises(RecipeError, match="Fix:") as refused:
        load_recipe(TINY, [*FSDP, *overrides])
    assert key in str(refused.value) and words in str(refused.value)


def test_deepspeed_refuses_an_offload_beside_zero_auto_as_fsdp_does():
    with pytest.raises(RecipeError, match="chosen by distributed.zero: auto. Fix:"):
        load_recipe(TINY, ["distributed.engine=deepspeed", "distributed.zero=auto", "distributed.offload=optimizer"])
