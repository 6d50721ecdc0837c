"""`launch import-lf`: LLaMA-Factory YAMLs (tests/lf_configs/, one per LF stage and finetuning type) become
recipes that `launch plan` accepts; unknown recipe keys named as in LF get hints from the same table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_launch

from launcher.recipe.import_lf import import_lf, mapping_table
from launcher.recipe.lf_strict import notes_table
from launcher.recipe.load import load_recipe
from tests.recipe.test_optimizers import LF_DEFAULTS

pytestmark = pytest.mark.unit

CONFIGS = ROOT / "tests" / "lf_configs"


def _import(tmp_path: Path, name: str, source: Path | None = None, *flags: str) -> tuple[dict, str, str]:
    out = tmp_path / f"{name}.yaml"
    proc = run_launch(["import-lf", str(source or CONFIGS / f"{name}.yaml"), "--out", str(out), *flags], timeout=60)
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
        "model.template": "qwen",
        "distributed.timeout_minutes": 35791,  # LF's 180000000 s, capped at the OS's longest wait
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
        "train.warmup_steps": 10,
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
    "qlora_bnb_sft": {"model.quantization.bits": 8, "model.template": "qwen3_nothink", "method.name": "lora"},
    "qwen3_nothink_lora_sft": {"model.template": "qwen3_nothink", "data.datasets": ["demo_sft", "demo_sharegpt"]},
    "lora_pt": {"stage": "pt", "train.lr": 5e-5, "train.micro_batch_size": 8, "model.dtype": "fp32"},
    "lora_rm": {"stage": "rm"},
    "lora_dpo": {"stage": "dpo", "train.pref_beta": 0.1, "train.pref_loss": "sigmoid"},
    "lora_orpo": {"stage": "orpo", "train.pref_beta": 0.1},
    "lora_kto": {"stage": "kto", "train.kto_desirable_weight": 1.0, "train.micro_batch_size": 1},
    "lora_ppo": {"stage": "ppo", "train.reward_model": "saves/tiny/lora/rm", "train.max_new_tokens": 32},
    "oft_sft": {"method.name": "oft", "method.block_size": 32, "model.dtype": "bf16"},
    "llama_pro_freeze_sft": {"method.name": "freeze", "method.trainable_layers": 2, "method.llama_pro": True},
}
UNMAPPED = {
    "llama3_lora_sft": ["save_only_model"],
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


def test_docs_tables_are_the_mapping_and_the_notes():
    docs = (ROOT / "docs" / "import_lf.md").read_text()
    assert mapping_table() in docs and notes_table() in docs


def _import_text(tmp_path: Path, text: str, *flags: str):
    source = tmp_path / "lf.yaml"
    source.write_text(text)
    out = tmp_path / "recipe.yaml"
    return run_launch(["import-lf", str(source), "--out", str(out), *flags], timeout=60), out


TRAINING = "model_name_or_path: builtin:tiny-qwen2\nstage: sft\ndo_train: true\ndataset: demo_sft\ntemplate: qwen\n"


def test_keys_that_change_training_stop_the_import_all_in_one_message(tmp_path):
    text = TRAINING + (
        "use_llama_pro: true\nuse_mca: true\nmixture_of_depths: convert\nquantization_bit: 4\n"
        "quantization_method: hqq\nrun_name: mine\n"
    )
    proc, out = _import_text(tmp_path, text)
    assert proc.returncode == 2 and not out.exists() and "Traceback" not in proc.stderr
    for key in (
        "use_llama_pro: use_llama_pro with finetuning_type lora",
        "use_mca: not a key the importer knows",
        "mixture_of_depths:",
        "quantization_bit: quantization_method hqq",
    ):
        assert key in proc.stderr, proc.stderr
    assert "4 LLaMA-Factory key(s) change what is trained" in proc.stderr and "--lenient" in proc.stderr
    assert "run_name" not in proc.stderr  # logging only: a note, not a refusal

    proc, out = _import_text(tmp_path, text, "--lenient")
    assert proc.returncode == 0, proc.stderr
    written = out.read_text()
    for key in ("use_llama_pro", "use_mca", "mixture_of_depths", "quantization_bit"):
        assert f"#   {key}: DROPPED (--lenient), changes what is trained: " in written
        assert f"dropped (--lenient): {key}: " in proc.stderr
    assert "#   run_name: logging/bookkeeping only" in written
    assert run_launch(["plan", str(out)], timeout=60).returncode == 0


OFT_AND_LLAMA_PRO_REFUSALS = {
    "oft_target other than lora_target": (
        {"finetuning_type": "oft", "oft_target": "q_proj,v_proj"},
        "oft_target q_proj,v_proj: LF ignores it, its OFT adapts lora_target's modules (all)",
    ),
    "use_llama_pro with lora": ({"use_llama_pro": True}, "use_llama_pro with finetuning_type lora"),
}


@pytest.mark.parametrize("case", OFT_AND_LLAMA_PRO_REFUSALS)
def test_oft_and_llama_pro_settings_lf_trains_differently_are_refused(tmp_path, case):
    from launcher.errors import LFImportError
    from launcher.recipe.lf_strict import strict_import

    extra, needle = OFT_AND_LLAMA_PRO_REFUSALS[case]
    lf = {**yaml.safe_load(TRAINING), **extra}
    with pytest.raises(LFImportError, match="Fix:") as refused:
        strict_import(lf, tmp_path / "lf.yaml", tmp_path, lenient=False, predict=False)
    assert needle in str(refused.value)


def test_oft_keys_map_to_the_method_keys(tmp_path):
    from launcher.recipe.lf_strict import strict_import

    lf = {**yaml.safe_load(TRAINING), "finetuning_type": "oft", "oft_rank": 4, "oft_block_size": 0}
    lf |= {"module_dropout": 0.1, "lora_target": "q_proj,v_proj", "oft_target": "q_proj, v_proj"}
    recipe = strict_import(lf, tmp_path / "lf.yaml", tmp_path, lenient=False, predict=False)[3]
    assert recipe["method"] == {
        "name": "oft",
        "blocks": 4,
        "block_size": 0,
        "module_dropout": 0.1,
        "target": ["q_proj", "v_proj"],
    }


@pytest.mark.parametrize("method", ["hqq", "eetq", "gptq", "awq"])
def test_quantization_methods_other_than_bitsandbytes_are_refused(tmp_path, method):
    proc, _ = _import_text(
        tmp_path, TRAINING + f"finetuning_type: lora\nquantization_bit: 4\nquantization_method: {method}\n"
    )
    assert proc.returncode == 2
    assert f"quantization_method {method}: LF quantizes the base with {method}" in proc.stderr
    assert "Fix: quantization_method: bnb" in proc.stderr


# every LF template name LF's v0 examples use, and the common ones LF users type
LF_NAMES = (
    "qwen3 qwen3_5 qwen3_5_nothink llama2 deepseek3 deepseek mistral glm4 gemma phi yi baichuan2 default chatglm3"
)


@pytest.mark.parametrize("template", LF_NAMES.split())
def test_lf_template_names_map_to_lfs_rendering_of_that_name(template):
    recipe, unmapped = import_lf({**yaml.safe_load(TRAINING), "template": template})
    assert recipe["model"]["template"] == template
    assert "template" not in dict(unmapped)


def test_an_lf_template_not_registered_is_refused_naming_the_accepted(tmp_path):
    proc, _ = _import_text(tmp_path, TRAINING.replace("template: qwen", "template: llava"))
    assert proc.returncode == 2
    assert "template llava: " in proc.stderr and "template: auto" in proc.stderr
    assert all(name in proc.stderr for name in ("qwen3_nothink", "deepseek3", "chatglm3", "baichuan2"))


def test_dora_with_rslora_is_refused_liger_is_a_note(tmp_path):
    proc, _ = _import_text(tmp_path, TRAINING + "finetuning_type: lora\nuse_dora: true\nuse_rslora: true\n")
    assert proc.returncode == 2 and "use_dora with use_rslora" in proc.stderr
    proc, out = _import_text(tmp_path, TRAINING + "finetuning_type: lora\nenable_liger_kernel: true\n")
    assert proc.returncode == 0 and "not mapped: enable_liger_kernel: speed only" in proc.stderr


def test_remote_dataset_dir_is_refused_with_the_download_command(tmp_path):
    proc, _ = _import_text(tmp_path, TRAINING + "dataset_dir: REMOTE:llamafactory/demo_data\n")
    assert proc.returncode == 2
    assert "hf download llamafactory/demo_data --repo-type dataset --local-dir data/demo_data" in proc.stderr


NOT_TRAINING = {
    "accelerate_fsdp_config": [
        "is an accelerate config (distributed_type FSDP)",
        "PyTorch FSDP2, each parameter sharded over all ranks (FULL_SHARD)",
        "set these recipe keys: distributed.nnodes: 1; distributed.nproc_per_node: 2; distributed.engine: fsdp; "
        "model.dtype: bf16 (",
    ],
    "accelerate_fsdp2_offload_config": [
        "distributed.engine: fsdp; distributed.offload: all; model.dtype: bf16 (",
    ],
    "chat_lora": [
        "inference config",
        "`launch chat --model builtin:tiny-qwen2 --adapter saves/tiny/lora/sft --template qwen --trust-remote-code`",
        "`launch serve --model builtin:tiny-qwen2 --adapter saves/tiny/lora/sft --trust-remote-code`",
    ],
    "merge_lora": [
        "export config",
        "`launch merge --base builtin:tiny-qwen2 --adapter saves/tiny/lora/sft --out output/tiny_lora_sft "
        "--shard-size 5GB`",
        "Ollama Modelfile is not written",
    ],
    "export_gptq": ["GPTQ export (export_quantization_bit) is not supported", "no adapter to merge"],
    "lora_predict": ["predict config", "--predict --out", "then `launch eval "],
}


@pytest.mark.parametrize("name", sorted(NOT_TRAINING))
def test_files_that_are_not_training_configs_name_their_launch_command(tmp_path, name):
    out = tmp_path / "recipe.yaml"
    proc = run_launch(["import-lf", str(CONFIGS / f"{name}.yaml"), "--out", str(out)], timeout=60)
    assert proc.returncode == 2 and not out.exists(), proc.stderr
    for part in NOT_TRAINING[name]:
        assert part in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["accelerate_fsdp_config", "accelerate_fsdp2_offload_config"])
def test_an_accelerate_fsdp_configs_recipe_keys_make_a_valid_recipe(tmp_path, name):
    proc = run_launch(["import-lf", str(CONFIGS / f"{name}.yaml"), "--out", str(tmp_path / "r.yaml")], timeout=60)
    keys = proc.stderr.split("set these recipe keys: ", 1)[1].split(" (", 1)[0].split("; ")
    overrides = [key.replace(": ", "=", 1) for key in keys if not key.startswith("model.dtype")]  # bf16: not on CPU
    assert load_recipe(ROOT / "recipes" / "sft_tiny.yaml", overrides)["distributed"]["engine"] == "fsdp"


def test_lf_v1_format_is_named_with_what_to_do(tmp_path):
    proc, _ = _import_text(
        tmp_path, "model: Qwen/Qwen3-0.6B\ntemplate: qwen3_nothink\ntrain_dataset: data/v1_sft_demo.yaml\n"
    )
    assert proc.returncode == 2 and "LLaMA-Factory's v1 config format" in proc.stderr and "v0" in proc.stderr


def test_predict_config_imports_as_an_eval_recipe(tmp_path):
    out = tmp_path / "eval.yaml"
    proc = run_launch(["import-lf", str(CONFIGS / "lora_predict.yaml"), "--predict", "--out", str(out)], timeout=60)
    assert proc.returncode == 0 and f"`launch eval {out}`" in proc.stdout, proc.stderr
    recipe = yaml.safe_load(out.read_text())
    assert recipe["data"]["eval_datasets"] == ["demo_dev"] and recipe["model"]["adapter"] == "saves/tiny/lora/sft"
    proc = run_launch(["import-lf", str(CONFIGS / "lora_dpo.yaml"), "--predict"])
    assert proc.returncode == 2 and "is not a LLaMA-Factory predict config" in proc.stderr


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
    from tests.recipe.test_recipe_refusals import _bomb

    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + _bomb() + "template: *l8\n")
    _refused([str(lf)], f"{lf}:", "expands through YAML aliases to more than 100,000 values")


def test_a_key_or_value_cannot_leave_its_comment_line(tmp_path):
    """An LF key holding a newline used to write an `output:` section of its own into the recipe."""
    lf = tmp_path / "lf.yaml"
    lf.write_text(LF_HEAD + '"x\\noutput:\\n  dir: /etc\\n#": 1\n' + f"flash_attn: {'a' * 5000}\n")
    refused = run_launch(["import-lf", str(lf)], timeout=60)  # an unknown key stops the strict import
    assert refused.returncode == 2 and "  'x\\noutput:\\n  dir: /etc\\n#': not a key" in refused.stderr
    assert "\noutput:" not in refused.stderr, refused.stderr
    recipe, text, stderr = _import(tmp_path, "injected", lf, "--lenient")
    assert "output" not in recipe and recipe["model"]["path"] == "builtin:tiny-qwen2"
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any(c.startswith("#   'x\\noutput:\\n  dir: /etc\\n#': DROPPED (--lenient)") for c in comments), text
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


def test_lf_schedule_keys_map_to_the_recipes_schedule(tmp_path):
    """LF's warmup_steps (without max_steps), lr_scheduler_kwargs and eval batch size used to be dropped or refused."""
    text = TRAINING + (
        "lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs:\n  min_lr_rate: 0.1\nwarmup_steps: 7\n"
        "per_device_eval_batch_size: 16\n"
    )
    proc, out = _import_text(tmp_path, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = load_recipe(out)["train"]
    assert (train["scheduler"], train["min_lr_ratio"], train["warmup_steps"], train["warmup_ratio"]) == (
        "cosine_with_min_lr",
        0.1,
        7,
        0.0,
    )
    assert train["eval_batch_size"] == 16
    proc, _ = _import_text(tmp_path, TRAINING + "lr_scheduler_type: linear\nlr_scheduler_kwargs: {power: 2}\n")
    assert proc.returncode == 2 and "lr_scheduler_type linear takes no arguments here" in proc.stderr


FULL = TRAINING + "finetuning_type: full\n"
# LF's optimizer switches as its examples/extras write them (layer-wise off), and the recipe values they give:
# what the LF YAML leaves out takes LF's default (tests/recipe/test_optimizers.py LF_DEFAULTS)
LF_OPTIMIZER_CASES = {
    "galore": (
        "use_galore: true\ngalore_layerwise: false\ngalore_target: all\ngalore_rank: 128\ngalore_scale: 2.0\n",
        {"optimizer": "galore_adamw"},
        {"galore": {**LF_DEFAULTS["galore"], "rank": 128}},
    ),
    "apollo": (
        "use_apollo: true\napollo_layerwise: false\napollo_target: q_proj,v_proj\napollo_rank: 128\n"
        "apollo_scale: 32.0\napollo_scale_type: channel\n",
        {"optimizer": "apollo_adamw"},
        {"apollo": {**LF_DEFAULTS["apollo"], "target": ["q_proj", "v_proj"], "rank": 128}},
    ),
    "badam": (
        "use_badam: true\nbadam_mode: layer\nbadam_switch_mode: descending\nbadam_switch_interval: 20\n"
        "badam_verbose: 2\n",
        {"optimizer": "badam"},
        {"badam": {**LF_DEFAULTS["badam"], "switch_mode": "descending", "switch_interval": 20}},
    ),
    "adam_mini": ("use_adam_mini: true\n", {"optimizer": "adam_mini"}, {}),
    "muon": ("use_muon: true\n", {"optimizer": "muon"}, {"muon": LF_DEFAULTS["muon"]}),
}


@pytest.mark.parametrize("case", LF_OPTIMIZER_CASES)
def test_lf_optimizer_switches_map_with_lfs_defaults(tmp_path, case):
    """GaLore, APOLLO, BAdam, Adam-mini and Muon used to be refused (before that: plain AdamW)."""
    from launcher.recipe.lf_strict import strict_import

    keys, expected, sections = LF_OPTIMIZER_CASES[case]
    text, notes, _, _ = strict_import(yaml.safe_load(FULL + keys), tmp_path / "lf.yaml", tmp_path, False, False)
    (tmp_path / "recipe.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "recipe.yaml")  # the recipe's own checks pass: engine ddp, one process for BAdam
    assert {"optimizer": recipe["train"]["optimizer"]} == expected
    for section, values in sections.items():
        assert recipe["train"][section] == values
    assert ("badam_verbose" in dict(notes)) == (case == "badam")


def test_lf_fused_adamw_is_adamw_torch_with_a_note(tmp_path):
    """transformers 5's default optim, which LF YAMLs carry: the same AdamW update, written as adamw_torch."""
    from launcher.recipe.lf_strict import strict_import

    text, notes, refused, _ = strict_import(
        yaml.safe_load(FULL + "optim: adamw_torch_fused\n"), tmp_path / "lf.yaml", tmp_path, False, False
    )
    (tmp_path / "recipe.yaml").write_text(text)
    assert load_recipe(tmp_path / "recipe.yaml")["train"]["optimizer"] == "adamw_torch" and not refused
    assert "adamw_torch_fused is written as train.optimizer: adamw_torch" in dict(notes)["optim"]
    assert "optim: adamw_torch_fused is written as" in text  # the recipe's comment says it too


@pytest.mark.parametrize(
    "keys,needle",
    [
        ("use_galore: true\ngalore_layerwise: true\n", "galore_layerwise: true steps each parameter"),
        ("use_apollo: true\napollo_layerwise: true\n", "apollo_layerwise: true steps each parameter"),
        ("use_galore: true\noptim: adamw_8bit\n", "optim 'adamw_8bit' with use_galore"),
        ("use_badam: true\nbadam_mode: ratio\n", "badam_mode: ratio (BAdam's BlockOptimizerRatio"),
        ("use_badam: true\nbadam_switch_interval: -1\n", "badam_switch_interval -1"),
        ("use_adam_mini: true\nuse_muon: true\n", "use_muon: LF builds its optimizer from use_adam_mini first"),
        ("use_muon: true\nweight_decay: 0.1\n", "LF's bundled Muon decays every parameter"),
    ],
)
def test_lf_optimizer_settings_without_a_faithful_mapping_are_refused(tmp_path, keys, needle):
    from launcher.errors import LFImportError
    from launcher.recipe.lf_strict import strict_import

    with pytest.raises(LFImportError, match="Fix") as refused:
        strict_import(yaml.safe_load(FULL + keys), tmp_path / "lf.yaml", tmp_path, False, False)
    assert needle in str(refused.value)


def test_lf_report_to_maps_the_offline_trackers(tmp_path):
    proc, out = _import_text(tmp_path, TRAINING + "report_to: wandb,mlflow,swanlab\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_recipe(out)["output"]["report_to"] == ["wandb", "mlflow", "swanlab"]
    proc, out = _import_text(tmp_path, TRAINING + "report_to: comet_ml\n", "--force")
    assert proc.returncode == 0 and "not mapped: report_to: report_to 'comet_ml'" in proc.stderr, proc.stderr
    proc, out = _import_text(
        tmp_path, TRAINING + "report_to: wandb\nuse_swanlab: true\nswanlab_mode: local\nswanlab_project: p\n", "--force"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_recipe(out)["output"]["report_to"] == ["wandb", "swanlab"]
    proc, _ = _import_text(tmp_path, TRAINING + "use_swanlab: true\n", "--force")  # LF's default: the cloud
    assert proc.returncode == 2 and "Fix: swanlab_mode: local and no swanlab_api_key" in proc.stderr, proc.stderr


def test_lf_rope_scaling_maps_with_the_factor_lf_derives(tmp_path):
    proc, out = _import_text(tmp_path, TRAINING + "rope_scaling: yarn\ncutoff_len: 5000\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_recipe(out)["model"]["rope_scaling"] == {
        "type": "yarn",
        "factor": None,
        "original_max_position_embeddings": None,
    }
    plan = run_launch(["plan", str(out)], timeout=60)
    assert plan.returncode == 0 and "context: 6144 = yarn RoPE factor 3.0 x original 2048" in plan.stdout, plan.stdout


def test_lf_use_dft_loss_maps_to_the_sft_loss(tmp_path):
    proc, out = _import_text(tmp_path, TRAINING + "use_dft_loss: true\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_recipe(out)["train"]["sft_loss"] == "dft"
