"""A user's own DeepSpeed JSON, `distributed.deepspeed_config` (issue 16, point 10), at plan level.

Through the real `launch plan`: its "auto" values are filled from the recipe (oracle: the recipe's own values
and the world size), its explicit values kept, its stage/offload become the recipe's where the recipe sets
none; each contradiction, a broken file and an "auto" nobody fills are refused with exit 2 naming both sides.
The one real run under a user's JSON is in test_model_ready.py (it also loads a hub id from a cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_launch
from tests.model.test_model_ready import _refused as refused

TINY = "recipes/sft_tiny.yaml"  # sets distributed.zero: 2 and model.dtype: fp32; 2 CPU processes

FULL_AUTO = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "steps_per_print": 7,
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_min_lr": "auto",
            "warmup_max_lr": "auto",
            "warmup_num_steps": "auto",
            "total_num_steps": "auto",
        },
    },
    "zero_optimization": {
        "stage": 2,
        "overlap_comm": False,
        "reduce_bucket_size": "auto",
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
    },
}


def recipe_without_zero(tmp_path: Path) -> str:
    """recipes/sft_tiny.yaml without its distributed.zero line: the JSON decides the stage."""
    text = (ROOT / TINY).read_text()
    out = tmp_path / "sft_no_zero.yaml"
    out.write_text("".join(line for line in text.splitlines(keepends=True) if not line.strip().startswith("zero:")))
    return str(out)


def write_json(tmp_path: Path, config: dict, name: str = "ds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config, indent=2))
    return path


def plan_deepspeed(stdout: str) -> tuple[str, dict]:
    """(heading, config) of `launch plan`'s DeepSpeed section."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# deepspeed config"))
    end = lines.index("", start)
    return lines[start], json.loads("\n".join(lines[start + 1 : end]))


def _refused(args: list[str], *needles: str) -> str:
    return refused(run_launch(["plan", *args], timeout=120), *needles)


@pytest.mark.unit
def test_auto_values_are_filled_from_the_recipe_and_explicit_ones_kept(tmp_path):
    ds = write_json(tmp_path, FULL_AUTO)
    recipe = recipe_without_zero(tmp_path)
    proc = run_launch(
        [
            "plan",
            recipe,
            f"distributed.deepspeed_config={ds}",
            "train.micro_batch_size=3",
            "train.grad_accum=5",
            "train.max_grad_norm=0.5",
            "train.lr=2e-4",
            "train.weight_decay=0.01",
        ],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    heading, config = plan_deepspeed(proc.stdout)
    assert str(ds) in heading and "scheduler.params.warmup_num_steps, scheduler.params.total_num_steps" in heading
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["gradient_accumulation_steps"] == 5
    assert config["train_batch_size"] == 3 * 5 * 2  # x the 2 CPU processes
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": False} and "fp16" not in config  # model.dtype: fp32
    assert config["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    assert config["scheduler"]["params"] == {
        "warmup_min_lr": 0,
        "warmup_max_lr": 2e-4,
        "warmup_num_steps": "auto",
        "total_num_steps": "auto",
    }  # step counts: the Trainer's, at run time
    hidden = json.loads((ROOT / "launcher/model/builtin/tiny_qwen2/config.json").read_text())["hidden_size"]
    assert config["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": False,
        "reduce_bucket_size": hidden * hidden,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
    }  # no CUDA
    assert config["steps_per_print"] == 7
    # the JSON's stage and offload are the run's: the memory planner and the resume checks read them from the recipe
    assert "distributed.zero: 2 from" in proc.stderr and "distributed.offload: optimizer from" in proc.stderr
    resolved = proc.stdout.split("# world")[0]
    assert "  zero: 2\n" in resolved and "  offload: optimizer\n" in resolved


@pytest.mark.unit
def test_a_stage_auto_is_the_recipes_zero(tmp_path):
    ds = write_json(tmp_path, {**FULL_AUTO, "zero_optimization": {"stage": "auto"}})
    proc = run_launch(["plan", TINY, "distributed.zero=3", f"distributed.deepspeed_config={ds}"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert plan_deepspeed(proc.stdout)[1]["zero_optimization"] == {"stage": 3}


@pytest.mark.unit
@pytest.mark.parametrize(
    "zero_optimization,overrides,needles",
    [
        (
            {"stage": 2},
            ["distributed.zero=3"],
            ("distributed.zero = 3, but", "zero_optimization.stage: 2", "Fix: drop distributed.zero from the recipe"),
        ),
        ({"stage": 3}, [], (f"{TINY}:", "distributed.zero = 2, but", "zero_optimization.stage: 3")),
        (
            {"stage": 2},
            ["distributed.offload=optimizer"],
            ("distributed.offload = 'optimizer', but", "offload sections: 'none'"),
        ),
        (
            {"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}},
            ["distributed.zero=3", "distributed.offload=none"],
            ("distributed.offload = 'none', but", "'all'"),
        ),
    ],
)
def test_recipe_zero_or_offload_against_the_jsons_is_refused(tmp_path, zero_optimization, overrides, needles):
    ds = write_json(tmp_path, {**FULL_AUTO, "zero_optimization": zero_optimization})
    _refused([TINY, f"distributed.deepspeed_config={ds}", *overrides], str(ds), *needles)


@pytest.mark.unit
@pytest.mark.parametrize(
    "field,value,recipe_key,ours",
    [
        ("gradient_accumulation_steps", 4, "train.grad_accum", 2),
        ("train_micro_batch_size_per_gpu", 8, "train.micro_batch_size", 4),
        ("train_batch_size", 64, "train.micro_batch_size x train.grad_accum x world size", 16),
        ("gradient_clipping", 0.3, "train.max_grad_norm", 1.0),
        ("bf16", {"enabled": True}, "model.dtype", False),
    ],
)
def test_an_explicit_value_against_the_recipe_is_refused_naming_both(tmp_path, field, value, recipe_key, ours):
    ds = write_json(tmp_path, {**FULL_AUTO, "zero_optimization": {"stage": 2}, field: value})
    shown = field if not isinstance(value, dict) else f"{field}.enabled"
    theirs = json.dumps(value if not isinstance(value, dict) else value["enabled"])
    _refused(
        [TINY, f"distributed.deepspeed_config={ds}"],
        f"{ds}: {shown} = {theirs}",
        f"the recipe's {recipe_key} makes it {json.dumps(ours)}",
        f"Fix: set {recipe_key} to match",
    )


@pytest.mark.multiproc
def test_training_refuses_a_contradiction_before_anything_starts(tmp_path):
    ds = write_json(tmp_path, {**FULL_AUTO, "zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4})
    out = tmp_path / "run"
    proc = run_launch([TINY, f"distributed.deepspeed_config={ds}", f"output.dir={out}"], timeout=120)
    assert proc.returncode == 2 and "gradient_accumulation_steps = 4" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


@pytest.mark.unit
def test_a_broken_or_missing_json_is_refused_naming_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "zero_optimization": {"stage": 2},\n  "gradient_clipping": 1.0,\n}\n')
    _refused(
        [TINY, f"distributed.deepspeed_config={broken}"],
        f"{broken}:4:1: invalid JSON",
        "no comments or trailing commas",
    )
    _refused(
        [TINY, f"distributed.deepspeed_config={tmp_path / 'none.json'}"],
        f"{tmp_path / 'none.json'} (named by distributed.deepspeed_config): cannot read it (No such file or directory)",
    )
    listing = write_json(tmp_path, [1, 2], "list.json")
    _refused([TINY, f"distributed.deepspeed_config={listing}"], "holds a JSON list, not an object")


@pytest.mark.unit
def test_an_auto_nothing_fills_and_the_ddp_engine_are_refused(tmp_path):
    ds = write_json(tmp_path, {**FULL_AUTO, "zero_optimization": {"stage": 3, "sub_group_size": "auto"}})
    _refused(
        [TINY, "distributed.zero=3", f"distributed.deepspeed_config={ds}"],
        'zero_optimization.sub_group_size is "auto"',
        "Fix: write a value there",
    )
    _refused(
        [TINY, "distributed.zero=3", f"distributed.deepspeed_config={ds}", "distributed.engine=ddp"],
        "distributed.engine = 'ddp' with distributed.deepspeed_config",
        "Fix: distributed.engine: deepspeed",
    )


@pytest.mark.unit
def test_a_json_without_zero_optimization_is_zero_0_as_in_deepspeed(tmp_path):
    ds = write_json(tmp_path, {k: v for k, v in FULL_AUTO.items() if k not in ("zero_optimization", "optimizer")})
    proc = run_launch(["plan", recipe_without_zero(tmp_path), f"distributed.deepspeed_config={ds}"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "zero_optimization" not in plan_deepspeed(proc.stdout)[1]
    assert "  zero: 0\n" in proc.stdout.split("# world")[0] and "distributed.zero: 0 from" in proc.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "zero_optimization, field, value",
    [
        ({"stage": 7}, "zero_optimization.stage", "7"),
        ({"stage": "two"}, "zero_optimization.stage", '"two"'),
        ({"stage": 2.9}, "zero_optimization.stage", "2.9"),
        ({"stage": None}, "zero_optimization.stage", "null"),
        ("three", "zero_optimization", '"three"'),
        (None, "zero_optimization", "null"),
        ({"stage": 3, "offload_param": "cpu"}, "zero_optimization.offload_param", '"cpu"'),
        ({"stage": 3, "offload_optimizer": {"device": "gpu"}}, "zero_optimization.offload_optimizer.device", '"gpu"'),
    ],
    ids=["stage-7", "stage-word", "stage-fraction", "stage-null", "not-an-object", "null", "offload-word", "device"],
)
def test_a_zero_optimization_deepspeed_would_refuse_is_refused_by_name(tmp_path, zero_optimization, field, value):
    """These used to end in a ValueError/AttributeError traceback, or (2.9) to plan ZeRO-2."""
    ds = write_json(tmp_path, {"zero_optimization": zero_optimization})
    _refused(
        [recipe_without_zero(tmp_path), f"distributed.deepspeed_config={ds}"],
        f"{ds} (distributed.deepspeed_config): {field} = {value}: expected",
        "Fix:",
    )
