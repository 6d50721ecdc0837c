"""distributed.sequence_parallel before launch (issue 25): what the recipe, the world and the model's heads
refuse (exit 2, naming the key and the fix), the mesh `launch plan` shows, activations divided by the degree,
and `sequence_parallel: auto` picking the smallest degree that fits. Training for real: tests/engines/
test_sequence_parallel.py."""

from __future__ import annotations

import json

import pytest

from launcher.errors import RecipeError
from launcher.model.shape import KNOWN_SHAPES
from launcher.plan import build_plan
from launcher.plan.memory import estimate_option
from launcher.recipe.load import load_recipe
from tests.conftest import ROOT, run_launch

pytestmark = pytest.mark.unit

TINY = str(ROOT / "recipes" / "sft_tiny.yaml")
LONG = str(ROOT / "recipes" / "sft_qwen2_long.yaml")
SP2 = ("distributed.sequence_parallel=2", "distributed.zero=3")
FSDP_SP2 = ("distributed.sequence_parallel=2", "distributed.engine=fsdp")


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_a_degree_that_does_not_divide_the_heads_is_refused_naming_them():
    proc = run_launch(
        ["plan", TINY, "distributed.sequence_parallel=3", "distributed.zero=3", "distributed.nproc_per_node=3"]
    )
    assert proc.returncode == 2, proc.stderr
    assert "distributed.sequence_parallel: 3 does not divide the model's 4 attention heads" in proc.stderr
    assert "Fix:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        # Qwen2-7B: 28 heads, 4 KV heads; 7 divides the heads, but neither 4 nor 7 divides the other
        ((LONG, "distributed.sequence_parallel=7", "distributed.nproc_per_node=7"), "4 KV heads"),
        ((TINY, *SP2, "distributed.nproc_per_node=3"), "does not divide the world size 3"),
        (
            (TINY, "distributed.engine=fsdp", "distributed.sequence_parallel=3", "distributed.nproc_per_node=3"),
            "3 does not divide the model's 4 attention heads",
        ),
    ],
    ids=["kv-heads", "world", "fsdp-heads"],
)
def test_the_world_and_the_kv_heads_must_take_the_degree(overrides, said):
    recipe = load_recipe(overrides[0], list(overrides[1:]))
    with pytest.raises(RecipeError, match=said):
        build_plan(recipe, cwd=str(ROOT))


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (("distributed.sequence_parallel=2", "distributed.engine=ddp"), "distributed.engine: ddp has none"),
        (
            (
                "distributed.sequence_parallel=2",
                "distributed.zero=auto",
                "method={name: prefix}",
                "train.gradient_checkpointing=false",
            ),
            "cannot run method.name: prefix",
        ),
        ((*SP2, "data.packing=neat"), "drops the 4-D mask"),
        ((*SP2, "train.loss_kernel=liger"), "liger-kernel's patched loss has not been proven on sequence shards"),
        ((*SP2, "train.sft_loss=dft"), "train.sft_loss: dft cannot run under distributed.sequence_parallel: 2"),
        ((*SP2, "model.attn=eager"), "Ulysses attention wraps sdpa or flash_attention_2"),
        ((*FSDP_SP2, "model.attn=eager"), "distributed.engine: fsdp: its Ulysses attention wraps sdpa."),
        ((*FSDP_SP2, "train.loss_kernel=liger"), "Fix: set train.loss_kernel: chunked"),
    ],
    ids=["ddp", "prefix", "neat", "liger", "dft", "eager", "fsdp-eager", "fsdp-liger"],
)
def test_what_sequence_parallelism_cannot_run_with_is_refused_with_the_reason(overrides, said):
    with pytest.raises(RecipeError, match="Fix:") as refused:
        load_recipe(TINY, list(overrides))
    assert said in str(refused.value)


def test_zero_2_is_refused_for_the_gradient_scale():
    with pytest.raises(RecipeError) as refused:
        load_recipe(TINY, ["distributed.sequence_parallel=2"])
    assert "needs distributed.zero: 3 (got 2)" in str(refused.value)
    assert "N times too large" in str(refused.value) and "#5248" in str(refused.value)


def test_other_stages_are_refused():
    proc = run_launch(["plan", str(ROOT / "recipes" / "dpo_tiny.yaml"), *SP2])
    assert proc.returncode == 2
    assert "distributed.sequence_parallel: 2 runs stage pt or sft" in proc.stderr


def test_the_plan_holds_the_mesh_and_deepspeed_counts_data_parallel_ranks():
    plan = build_plan(load_recipe(TINY, list(SP2)), cwd=str(ROOT))
    assert plan["mesh"]["data_parallel"] == 1 and plan["mesh"]["sequence_parallel"] == 2
    assert plan["batch"]["global_batch_size"] == 4 * 2 * 1  # micro x grad_accum x data-parallel
    zero = plan["deepspeed"]["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_scatter"] is True
    assert plan["deepspeed"]["sequence_parallel_size"] == 2 and "train_batch_size" not in plan["deepspeed"]
    assert plan["kernels"]["loss"] == "plain"


def test_fsdp_plans_the_mesh_over_sdpa_with_neat_packing_and_shards_over_the_world():
    plan = build_plan(load_recipe(TINY, [*FSDP_SP2, "data.packing=neat"]), cwd=str(ROOT))
    assert plan["mesh"]["data_parallel"] == 1 and plan["mesh"]["sequence_parallel"] == 2
    assert plan["kernels"]["attn"] == "sdpa" and not plan["kernels"]["padding_free"]
    assert "sequence_parallel_size" not in plan["fsdp"]
    proc = run_launch(["plan", TINY, *FSDP_SP2, "data.packing=neat"])
    assert proc.returncode == 0, proc.stderr
    mesh = (
        "mesh: data-parallel 1 x sequence-parallel 2: each sequence split over 2 ranks; parameters sharded over all 2"
    )
    assert mesh in proc.stdout


def test_a_deepspeed_config_without_reduce_scatter_is_refused(tmp_path):
    config = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    config["zero_optimization"]["reduce_scatter"] = False
    (tmp_path / "ds.json").write_text(json.dumps(config))
    recipe = load_recipe(TINY, [*SP2, f"distributed.deepspeed_config={tmp_path / 'ds.json'}"])
    with pytest.raises(RecipeError, match="reduce_scatter = false, but distributed.sequence_parallel: 2 needs it"):
        build_plan(recipe, cwd=str(ROOT))


@pytest.mark.parametrize(("engine", "zero"), [("deepspeed", 3), ("fsdp", 0)])
def test_activations_and_logits_are_divided_by_the_degree(engine, zero):
    shape = KNOWN_SHAPES["Qwen/Qwen2-7B"]
    options = {
        sp: estimate_option(
            load_recipe(LONG, [f"distributed.sequence_parallel={sp}", f"distributed.engine={engine}"]),
            shape,
            zero,
            "none",
            8,
            "cuda",
            "bf16",
        )
        for sp in (1, 4)
    }
    assert options[4].activations_gb == pytest.approx(options[1].activations_gb / 4)
    assert options[4].total_gb - options[4].activations_gb == pytest.approx(
        options[1].total_gb - options[1].activations_gb
    )


def test_the_long_recipe_plans_the_smallest_degree_that_fits():
    proc = run_launch(["plan", LONG])
    assert proc.returncode == 0, proc.stderr
    assert "mesh: data-parallel 4 x sequence-parallel 2" in proc.stdout
    assert "(1: " in proc.stdout and "do not" in proc.stdout  # why not 1
    chosen = next(line for line in proc.stdout.splitlines() if line.endswith("<- plan"))
    assert "yes <- plan" in chosen


@pytest.mark.parametrize(("memory_gb", "degree"), [(1000, 1), (80, 2), (40, 4)])
def test_auto_picks_the_smallest_degree_whose_estimate_fits(memory_gb, degree):
    plan = build_plan(load_recipe(LONG, [f"distributed.device_memory_gb={memory_gb}"]), cwd=str(ROOT))
    assert plan["mesh"]["sequence_parallel"] == degree
    fitting = [o for o in plan["memory"]["options"] if o["fits"] and (o["zero"], o["offload"]) == (3, "none")]
    assert fitting, plan["memory"]["options"]


def test_auto_under_fsdp_picks_the_smallest_degree_that_fits():
    plan = build_plan(load_recipe(LONG, ["distributed.engine=fsdp", "distributed.zero=0"]), cwd=str(ROOT))
    assert plan["mesh"]["sequence_parallel"] == 2 and "1: " in plan["mesh"]["reason"]
    assert plan["memory"]["refusal"] is None


def test_auto_with_the_dft_loss_keeps_whole_sequences():
    """DFT needs the whole logits: auto tries no degree above 1 (and the plan says 256k tokens do not fit)."""
    plan = build_plan(load_recipe(LONG, ["train.sft_loss=dft"]), cwd=str(ROOT))
    assert plan["mesh"]["sequence_parallel"] == 1 and plan["memory"]["refusal"] is not None


def test_auto_under_an_engine_without_sequence_parallelism_keeps_whole_sequences():
    plan = build_plan(load_recipe(LONG, ["distributed.engine=ddp", "distributed.zero=0"]), cwd=str(ROOT))
    assert plan["mesh"]["sequence_parallel"] == 1


def test_a_context_that_does_not_fit_names_sequence_parallelism_as_a_fix():
    plan = build_plan(load_recipe(LONG, ["distributed.sequence_parallel=1"]), cwd=str(ROOT))
    assert "distributed.sequence_parallel: auto with distributed.zero: 3" in plan["memory"]["refusal"]
