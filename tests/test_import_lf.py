"""`launch import-lf`: LLaMA-Factory YAMLs (tests/lf_configs/, one per LF stage and finetuning type) become
recipes that `launch plan` accepts; unknown recipe keys named as in LF get hints from the same table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_launch

from launcher.recipe.import_lf import mapping_table

pytestmark = pytest.mark.unit

CONFIGS = ROOT / "tests" / "lf_configs"


def _import(tmp_path: Path, name: str, source: Path | None = None) -> tuple[dict, str, str]:
    out = tmp_path / f"{name}.yaml"
    proc = run_launch(["import-lf", str(source or CONFIGS / f"{name}.yaml"), "--out", str(out)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(out.read_text()), out.read_text(), proc.stderr


# LF config -> the recipe values it must give (stage/method names differ from LF's in places)
EXPECTED = {
    "llama3_lora_sft": {
        "stage": "sft",
        "method.name": "lora",
        "data.datasets": ["demo_sft", "demo_sharegpt"],
        "train.lr": 1e-4,
        "train.grad_accum": 8,
        "model.dtype": "bf16",
        "model.template": "qwen2",
        "distributed.engine": "ddp",
        "distributed.zero": 0,
        "train.eval_steps": 500,
        "eval.max_new_tokens": 64,
        "eval.do_sample": False,
        "eval.engine": "hf",
    },
    "qlora_sft": {
        "method.name": "lora",
        "model.quantization.bits": 4,
        "method.variant": "dora",
        "method.target": ["q_proj", "v_proj"],
        "data.packing": "neat",
        "train.warmup_ratio": 0.1,
    },
    "freeze_sft": {
        "method.name": "freeze",
        "method.trainable_layers": 2,
        "distributed.zero": 2,
        "distributed.offload": "none",
        "data.mask_history": True,  # LF refuses it beside train_on_prompt, as we do
    },
    "full_sft": {
        "method.name": "full",
        "distributed.engine": "deepspeed",
        "distributed.zero": 3,
        "distributed.offload": "all",
        "data.train_on_prompt": True,
    },
    "lora_pt": {"stage": "pt", "train.lr": 5e-5, "train.micro_batch_size": 8, "model.dtype": "fp32"},
    "lora_rm": {"stage": "rm"},
    "lora_dpo": {"stage": "dpo", "train.pref_beta": 0.1, "train.pref_loss": "sigmoid"},
    "lora_orpo": {"stage": "orpo", "train.pref_beta": 0.1},
    "lora_kto": {"stage": "kto", "train.kto_desirable_weight": 1.0, "train.micro_batch_size": 1},
    "lora_ppo": {"stage": "ppo", "train.reward_model": "saves/tiny/lora/rm", "train.max_new_tokens": 32},
}
UNMAPPED = {
    "llama3_lora_sft": ["save_only_model", "per_device_eval_batch_size"],
    "freeze_sft": ["lora_rank"],
    "full_sft": ["use_unsloth"],
    "lora_ppo": ["reward_model_type"],
}


def _get(recipe: dict, dotted: str):
    for part in dotted.split("."):
        recipe = recipe[part]
    return recipe


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_lf_stage_and_method_imports_and_plans(tmp_path, name):
    recipe, text, stderr = _import(tmp_path, name)
    for dotted, value in EXPECTED[name].items():
        assert _get(recipe, dotted) == value, (dotted, text)
    for key in UNMAPPED.get(name, []):  # listed with a reason, in the recipe and on stderr
        assert f"#   {key}: " in text and f"not mapped: {key}: " in stderr, (text, stderr)
    plan = run_launch(["plan", str(tmp_path / f"{name}.yaml")], timeout=60)
    assert plan.returncode == 0, plan.stderr


def test_deepspeed_json_read_for_stage_and_offload(tmp_path):
    (tmp_path / "ds.json").write_text(
        json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    )
    lf = tmp_path / "lf.yaml"
    lf.write_text(
        f"model_name_or_path: builtin:tiny-qwen2\nstage: sft\nfinetuning_type: full\ndataset: demo_sft\n"
        f"deepspeed: {tmp_path / 'ds.json'}\noutput_dir: {tmp_path / 'run'}\n"
    )
    recipe, _, _ = _import(tmp_path, "ds", lf)
    assert recipe["distributed"] == {"engine": "deepspeed", "zero": 2, "offload": "optimizer"}
    assert run_launch(["plan", str(tmp_path / "ds.yaml")], timeout=60).returncode == 0


@pytest.mark.parametrize(
    "override, hint",
    [
        ("train.learning_rate=1e-4", "train.lr"),
        ("train.gradient_accumulation_steps=4", "train.grad_accum"),
        ("bf16=true", "model.dtype"),
        ("data.dataset=demo_sft", "data.datasets"),
    ],
)
def test_lf_names_get_hints(override, hint):
    proc = run_launch(["plan", "recipes/sft_tiny.yaml", override], timeout=60)
    assert proc.returncode == 2
    assert f"Did you mean {hint}?" in proc.stderr and "LLaMA-Factory" in proc.stderr, proc.stderr


def test_bad_lf_file_is_one_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    proc = run_launch(["import-lf", str(tmp_path / "bad.yaml")], timeout=60)
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_docs_table_is_the_mapping():
    assert mapping_table() in (ROOT / "docs" / "import_lf.md").read_text()


LF_HEAD = "model_name_or_path: builtin:tiny-qwen2\nstage: sft\nfinetuning_type: lora\ndataset: demo_sft\n"


def _refused(args: list[str], *needles: str) -> str:
    proc = run_launch(["import-lf", *args], timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert all(needle in message for needle in needles), message
    return message


def test_a_value_of_the_wrong_kind_is_refused_by_its_lf_name_and_line(tmp_path):
    """`lora_rank: eight` used to end in a ValueError traceback."""
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + "lora_rank: eight\n")
    _refused([str(lf)], f"{lf}:5: lora_rank: method.rank = 'eight': expected a whole number", "Fix:")
    lf.write_text(LF_HEAD.replace("dataset: demo_sft", "dataset: [[demo_sft]]"))
    _refused([str(lf)], f"{lf}:4: dataset = [['demo_sft']]: not a value dataset can take", "Fix:")


@pytest.mark.parametrize("stage", ['"two"', "7", "2.5"])
def test_a_deepspeed_json_with_a_bad_stage_is_refused_naming_it(tmp_path, stage):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": %s}}' % stage)
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + f"deepspeed: {ds}\n")
    _refused([str(lf)], f"{ds}: zero_optimization.stage = {stage}: expected one of 0, 1, 2, 3", "(deepspeed)")


def test_exploding_aliases_are_refused_fast(tmp_path):
    """A billion-laughs LF YAML made import-lf allocate 3 GB rendering its value into a comment."""
    from tests.test_recipe_refusals import _bomb

    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + _bomb() + "template: *l8\n")
    _refused([str(lf)], f"{lf}:", "expands through YAML aliases to more than 100,000 values")


def test_a_key_or_value_cannot_leave_its_comment_line(tmp_path):
    """An LF key holding a newline used to write an `output:` section of its own into the recipe."""
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + '"x\\noutput:\\n  dir: /etc\\n#": 1\n' + f"flash_attn: {'a' * 5000}\n")
    recipe, text, stderr = _import(tmp_path, "injected", lf)
    assert "output" not in recipe and recipe["model"]["path"] == "builtin:tiny-qwen2"
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert "#   'x\\noutput:\\n  dir: /etc\\n#': no equivalent recipe key" in comments, text
    assert all(len(line) < 300 for line in comments) and "a" * 300 not in stderr


def test_out_never_replaces_the_lf_yaml_or_its_deepspeed_json(tmp_path):
    """`--out` naming its own LF YAML used to overwrite it."""
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + f"deepspeed: {ds}\n")
    before = lf.read_text(), ds.read_text()
    for out, what in ((lf, "is the LLaMA-Factory YAML"), (ds, "is its deepspeed JSON")):
        _refused([str(lf), "--out", str(out), "--force"], f"--out {out}: {what}", "not even with --force")
    assert (lf.read_text(), ds.read_text()) == before


def test_out_never_replaces_an_input_of_the_run_it_prepares(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + f"dataset_dir: {data}\n")
    registry = data / "dataset_info.json"
    before = registry.read_text()
    _refused([str(lf), "--out", str(registry), "--force"], "data.dataset_dir's registry", "not even with --force")
    _refused([str(lf), "--out", str(data / "demo_sft.json"), "--force"], "is data.datasets")
    assert registry.read_text() == before


def test_out_over_an_existing_recipe_needs_force(tmp_path):
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD)
    out = tmp_path / "recipe.yaml"
    out.write_text("mine\n")
    _refused([str(lf), "--out", str(out)], "the file exists", "--force")
    assert out.read_text() == "mine\n"
    assert run_launch(["import-lf", str(lf), "--out", str(out), "--force"], timeout=60).returncode == 0
    assert yaml.safe_load(out.read_text())["model"]["path"] == "builtin:tiny-qwen2"
