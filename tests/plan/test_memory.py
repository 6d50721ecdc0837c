"""Memory planner (launcher/plan/memory.py): parameter counts against the real models (transformers
on the meta device, the launcher's own methods and PEFT on the tiny model), ZeRO partitioning
arithmetic, `distributed.zero: auto`, and the table `launch plan` prints. No training here; the
estimate is compared with measured runs in bench/methods.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_launch

from launcher.model.builtin import builtin_config_path
from launcher.model.shape import KNOWN_SHAPES, shape_from_config
from launcher.plan import build_plan
from launcher.plan.memory import (
    GIB,
    ZERO3_MAX_LIVE_PARAMETERS,
    estimate,
    estimate_option,
    parameter_counts,
    pick_auto,
)
from launcher.recipe.load import load_recipe

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "sft_tiny.yaml")
QWEN = str(ROOT / "recipes" / "sft_qwen2.yaml")


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _recipe(path: str, *overrides: str, drop_lora: bool = False) -> dict:
    """A resolved recipe; drop_lora removes the recipe's own lora keys so another method can be set."""
    from launcher.recipe.load import apply_overrides, read_yaml, resolve

    raw, origins = read_yaml(path)
    if drop_lora:
        raw["method"] = {}
    return resolve(apply_overrides(raw, list(overrides), origins), origins)


def _meta_model(shape):
    """The transformers model of a Shape, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kind = Qwen2Config if shape.qkv_bias else LlamaConfig
    config = kind(
        num_hidden_layers=shape.layers,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", ["Qwen/Qwen2-0.5B", "Qwen/Qwen2-7B", "meta-llama/Meta-Llama-3-8B"])
def test_table_shapes_count_like_transformers(name):
    shape = KNOWN_SHAPES[name]
    model = _meta_model(shape)
    assert parameter_counts(shape, {"name": "full"}) == (model.num_parameters(),) * 2


def test_lora_all_on_a_qwen2_05b_shape_counts_like_peft():
    from peft import LoraConfig, get_peft_model

    shape = KNOWN_SHAPES["Qwen/Qwen2-0.5B"]
    method = _recipe(QWEN, "method.rank=16")["method"]
    peft_model = get_peft_model(
        _meta_model(shape), LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    assert parameter_counts(shape, method) == peft_model.get_nb_trainable_parameters()


METHOD_CASES = {
    "lora all": [],
    "lora dora, named targets, additional_target": [
        "method.variant=dora",
        "method.target=[q_proj,v_proj]",
        "method.additional_target=[embed_tokens]",
    ],
    "freeze last 2": ["method.name=freeze", "method.trainable_layers=2"],
    "freeze first 1 mlp + norm": [
        "method.name=freeze",
        "method.trainable_layers=-1",
        "method.trainable_modules=[mlp]",
        "method.extra_modules=[norm,lm_head]",
    ],
    "full": ["method.name=full"],
    "freeze linear probe": ["method.name=freeze", "method.trainable_layers=0", "method.extra_modules=[lm_head]"],
    "oft all, block size 16": ["method.name=oft", "method.block_size=16"],
    "oft blocks 4 shared, named targets, additional_target": [
        "method.name=oft",
        "method.block_size=0",
        "method.blocks=4",
        "method.block_share=true",
        "method.target=[q_proj,down_proj]",
        "method.additional_target=[lm_head]",
    ],
    "prefix": ["method.name=prefix", "train.gradient_checkpointing=false", "distributed.zero=2"],
    "prefix projection": [
        "method.name=prefix",
        "method.prefix_projection=true",
        "method.num_virtual_tokens=8",
        "train.gradient_checkpointing=false",
        "distributed.zero=2",
    ],
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_method_counts_equal_the_launchers_own_methods_on_the_tiny_model(case):
    """The oracle is the worker's code path: launcher.methods.apply_method on the real tiny model."""
    import torch
    from transformers import AutoModelForCausalLM

    from launcher.methods import apply_method, count_parameters
    from launcher.model.builtin import local_model_path

    overrides = METHOD_CASES[case]
    recipe = _recipe(TINY, *overrides, drop_lora=any(o.startswith("method.name=") for o in overrides))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(local_model_path("builtin:tiny-qwen2"))
    counted = count_parameters(apply_method(model, recipe))
    shape = shape_from_config(json.loads(builtin_config_path("builtin:tiny-qwen2").read_text()))
    assert parameter_counts(shape, recipe["method"]) == counted


def test_zero_stages_partition_params_grads_and_optimizer_states():
    """Full bf16 Adam: 2 + 2 + 12 bytes per parameter (ZeRO paper), split over the world as each
    stage says, plus the working buffers docs/monitoring.md lists."""
    shape, world = KNOWN_SHAPES["Qwen/Qwen2-7B"], 8
    recipe = _recipe(QWEN, "method.name=full", drop_lora=True)
    n = parameter_counts(shape, recipe["method"])[1]
    opts = {z: estimate_option(recipe, shape, z, "none", world, "cuda", "bf16") for z in range(4)}
    gib = lambda nbytes: nbytes / GIB  # noqa: E731
    bucket = gib(2 * shape.hidden**2)  # gradient reduce bucket (ZeRO-2/3)
    live = gib(2 * (ZERO3_MAX_LIVE_PARAMETERS + 0.9 * shape.hidden**2))  # ZeRO-3 gathered params + prefetch
    adam_tmp, grad_copy = gib(4 * n), gib(4 * n)  # foreach sqrt; ZeRO's fp32 flat grads
    assert opts[0].optimizer_gb == pytest.approx(gib(12 * n) + adam_tmp)
    assert opts[1].optimizer_gb == pytest.approx((gib(12 * n) + adam_tmp) / world)
    assert opts[0].grads_gb == pytest.approx(gib((2 + 4) * n))  # bf16 grads + DeepSpeed's fp32 accumulation
    assert opts[1].grads_gb == pytest.approx(gib(2 * n) + grad_copy / world)
    assert opts[2].grads_gb == pytest.approx(gib(2 * n) / world + bucket + grad_copy / world)
    assert opts[2].params_gb == pytest.approx(gib(2 * n))
    assert opts[3].params_gb == pytest.approx(gib(2 * n) / world + live)
    states = (
        opts[3].params_gb - live + opts[3].grads_gb - bucket + opts[3].optimizer_gb - (adam_tmp + grad_copy) / world
    )
    assert states == pytest.approx(gib(16 * n) / world)
    assert len({round(o.activations_gb, 9) for o in opts.values()}) == 1  # activations do not depend on ZeRO
    offloaded = estimate_option(recipe, shape, 3, "all", world, "cuda", "bf16")
    assert offloaded.optimizer_gb == 0 and offloaded.params_gb == pytest.approx(live)
    assert offloaded.host_gb == pytest.approx(gib((16 + 4) * n) / world)  # + the fp32 gradient copy


def test_the_planners_chunked_loss_slice_is_the_kernels():
    from launcher.kernels.loss import CHUNK_TOKENS
    from launcher.plan.memory import CHUNKED_LOSS_TOKENS

    assert CHUNKED_LOSS_TOKENS == CHUNK_TOKENS


def test_zero3_live_parameters_match_the_deepspeed_templates():
    for template in sorted((ROOT / "ds_configs").glob("zero3*.json")):
        config = json.loads(template.read_text())["zero_optimization"]
        assert config["stage3_max_live_parameters"] == ZERO3_MAX_LIVE_PARAMETERS, template.name


def _gpu_estimate(recipe: dict, world: int, memory_gb: float) -> dict:
    return estimate(recipe, world, "cuda", "bf16", memory_gb, "test", lambda zero, offload: None, host_memory_gb=None)


def test_zero_auto_picks_the_least_partitioning_that_fits_a_7b_full_fine_tune():
    recipe = _recipe(QWEN, "method.name=full", drop_lora=True)
    picks = {
        (world, gb): pick_auto(_gpu_estimate(recipe, world, gb))
        for world, gb in ((8, 80), (8, 40), (8, 30), (8, 16), (1, 80))
    }
    assert (picks[8, 80]["zero"], picks[8, 80]["offload"]) == (1, "none")  # 15 GB weights + 15 GB grads + 1/8 of Adam
    # on a GPU the chunked loss never holds the 152k-vocabulary logits of the 4,096 tokens: ZeRO-2 fits 40 GB
    assert (picks[8, 40]["zero"], picks[8, 40]["offload"]) == (2, "none")
    assert (picks[8, 30]["zero"], picks[8, 30]["offload"]) == (3, "none")
    assert (picks[8, 16]["zero"], picks[8, 16]["offload"]) == (3, "optimizer")
    assert (picks[1, 80]["zero"], picks[1, 80]["offload"]) == (2, "optimizer")  # Adam alone is > 100 GiB: offload
    tight_host = estimate(recipe, 1, "cuda", "bf16", 80, "test", lambda zero, offload: None, host_memory_gb=64)
    assert pick_auto(tight_host) is None  # offloaded Adam needs > 100 GiB of host memory


def test_zero_auto_on_the_tiny_recipe_on_cpu_plans_zero_0():
    plan = build_plan(load_recipe(TINY, ["distributed.zero=auto"]), cwd=str(ROOT))
    assert (plan["recipe"]["distributed"]["zero"], plan["recipe"]["distributed"]["offload"]) == (0, "none")
    assert plan["memory"]["auto"] == {"zero": 0, "offload": "none"}
    assert "stage" not in plan["deepspeed"]["zero_optimization"] or plan["deepspeed"]["zero_optimization"]["stage"] == 0


def test_options_the_recipe_refuses_are_marked_and_never_picked():
    recipe = _recipe(
        TINY, "method.name=prefix", "train.gradient_checkpointing=false", "distributed.zero=auto", drop_lora=True
    )
    plan = build_plan(recipe, cwd=str(ROOT))
    assert plan["recipe"]["distributed"]["zero"] == 0
    refused = {o["label"] for o in plan["memory"]["options"] if o["refused"]}
    assert refused == {"ZeRO-3", "ZeRO-3 + offload optimizer", "ZeRO-3 + offload all"}


def test_zero_auto_refuses_clearly_when_nothing_fits():
    proc = run_launch(["plan", QWEN, "distributed.zero=auto", "distributed.device_memory_gb=4"], timeout=60)
    assert proc.returncode == 2
    assert "distributed.zero: auto: no ZeRO stage or offload fits Qwen/Qwen2-7B-Instruct" in proc.stderr
    assert "Fix:" in proc.stderr and "Traceback" not in proc.stderr


def test_launch_plan_prints_the_estimate_table_offline():
    proc = run_launch(["plan", QWEN], timeout=60, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("# memory estimate per device (GiB)")[1].split("# environment")[0]
    trainable, total = parameter_counts(KNOWN_SHAPES["Qwen/Qwen2-7B"], load_recipe(QWEN)["method"])
    assert "table: Qwen/Qwen2-7B" in table and f"{total:,} total, {trainable:,} trainable" in table
    rows = [line for line in table.splitlines() if line.startswith("ZeRO-")]
    assert [r.split("  ")[0].strip() for r in rows] == [
        "ZeRO-0",
        "ZeRO-1",
        "ZeRO-2",
        "ZeRO-3",
        "ZeRO-2 + offload optimizer",
        "ZeRO-3 + offload optimizer",
        "ZeRO-3 + offload all",
    ]
    assert rows[3].endswith("<- plan")  # the recipe's own ZeRO-3


def test_grpo_rollout_counts_the_kv_cache_and_the_reference_model():
    """Qwen2-7B (28 layers, 4 KV heads of 128): each rank samples micro 8 x grad_accum 4 completions of up to
    cutoff 512 + 512 new tokens at once, keys and values in bf16; the reference is free with a new LoRA adapter
    (the adapter disabled) and a whole bf16 copy for full training, split over the ranks under ZeRO-3."""
    grpo = str(ROOT / "recipes" / "grpo_qwen2.yaml")
    shape, world = KNOWN_SHAPES["Qwen/Qwen2-7B"], 8
    kv_cache = 32 * 1024 * 28 * 2 * 512 * 2 / GIB  # 1.75 GiB
    lora = _recipe(grpo)
    # the same model, method, batch and loss (TRL's: whole logits) without rollouts
    sft_like = _recipe(grpo, "stage=sft", "train.loss_kernel=plain")
    for zero in (2, 3):
        grpo_option = estimate_option(lora, shape, zero, "none", world, "cuda", "bf16")
        assert grpo_option.rollout_gb == pytest.approx(kv_cache)
        sft_option = estimate_option(sft_like, shape, zero, "none", world, "cuda", "bf16")
        assert grpo_option.total_gb == pytest.approx(sft_option.total_gb + kv_cache)
    full = _recipe(grpo, "method.name=full", drop_lora=True)
    n = parameter_counts(shape, full["method"])[1]
    assert estimate_option(full, shape, 2, "none", world, "cuda", "bf16").rollout_gb == pytest.approx(
        kv_cache + 2 * n / GIB
    )
    assert estimate_option(full, shape, 3, "none", world, "cuda", "bf16").rollout_gb == pytest.approx(
        kv_cache + 2 * n / GIB / world
    )
    no_kl = _recipe(grpo, "method.name=full", "train.kl_coef=0", drop_lora=True)
    assert estimate_option(no_kl, shape, 2, "none", world, "cuda", "bf16").rollout_gb == pytest.approx(kv_cache)


def test_launch_plan_shows_the_grpo_rollout_line():
    proc = run_launch(["plan", "recipes/grpo_qwen2.yaml"], timeout=60, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (
        "rollout (stage grpo, in each option's other): generation KV cache 1.75 (32 sequences x 1024 tokens), "
        "reference model 0.00 (none: the new adapter disabled)" in proc.stdout
    )
