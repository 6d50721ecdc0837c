"""Plan: DeepSpeed configs resolved for every ZeRO stage and offload choice, commands per
launcher, and `launch plan` answering without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.plan import build_plan
from launcher.recipe.load import load_recipe
from tests.conftest import ZERO_OPTIONS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "sft_tiny.yaml")
QWEN = str(ROOT / "recipes" / "sft_qwen2.yaml")


def _auto_values(node) -> list:
    if isinstance(node, dict):
        return [v for child in node.values() for v in _auto_values(child)]
    return [node] if node == "auto" else []


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.parametrize("zero,offload", ZERO_OPTIONS)
def test_deepspeed_config_per_stage_and_offload(zero, offload):
    recipe = load_recipe(
        QWEN,
        [
            f"distributed.zero={zero}",
            f"distributed.offload={offload}",
            "train.micro_batch_size=3",
            "train.grad_accum=5",
            "train.max_grad_norm=0.7",
            "distributed.nproc_per_node=4",
        ],
    )
    ds = build_plan(recipe)["deepspeed"]
    assert _auto_values(ds) == [], "every auto must be resolved"
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["gradient_clipping"] == 0.7
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    zero_cfg = ds["zero_optimization"]
    assert zero_cfg["stage"] == zero
    assert ("offload_optimizer" in zero_cfg) == (offload in ("optimizer", "all"))
    assert ("offload_param" in zero_cfg) == (offload == "all")
    if offload != "none":
        assert zero_cfg["offload_optimizer"] == {"device": "cpu", "pin_memory": False}  # no CUDA, no pinning
        assert ds["optimizer"]["params"]["lr"] == recipe["train"]["lr"]
    else:
        assert "optimizer" not in ds  # the Trainer's own torch AdamW
    if zero == 3:
        hidden = 3584  # Qwen2-7B, from the offline table
        assert zero_cfg["reduce_bucket_size"] == hidden * hidden
        assert zero_cfg["stage3_param_persistence_threshold"] == 10 * hidden
        assert zero_cfg["stage3_gather_16bit_weights_on_model_save"] is True


def test_ddp_has_no_deepspeed_config():
    plan = build_plan(load_recipe(TINY, ["distributed.engine=ddp", "distributed.zero=0"]))
    assert plan["deepspeed"] is None


def test_world_on_cpu_is_two_gloo_processes():
    plan = build_plan(load_recipe(TINY))
    assert (plan["world"]["nproc_per_node"], plan["world"]["backend"], plan["world"]["device"]) == (2, "gloo", "cpu")
    assert plan["env"]["DS_ACCELERATOR"] == "cpu"
    assert plan["batch"]["global_batch_size"] == 4 * 2 * 2


def test_cpu_threads_per_rank_share_the_cores_unless_the_shell_sets_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    shared = str(max(1, (os.cpu_count() or 1) // 2))
    assert build_plan(load_recipe(TINY, ["distributed.nproc_per_node=2"]))["env"]["OMP_NUM_THREADS"] == shared
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert build_plan(load_recipe(TINY, ["distributed.nproc_per_node=2"]))["env"]["OMP_NUM_THREADS"] == "3"


TRACKERS = "output.report_to=[tensorboard,wandb,mlflow,swanlab]"


def test_every_tracker_logs_offline_into_the_output_dir(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "SWANLAB_MODE"):
        monkeypatch.delenv(name, raising=False)
    plan = build_plan(load_recipe(TINY, [TRACKERS, f"output.dir={tmp_path}"]))
    env = plan["env"]
    assert (env["WANDB_MODE"], env["WANDB_DIR"]) == ("offline", str(tmp_path))
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").as_uri()
    assert (env["SWANLAB_MODE"], env["SWANLAB_LOG_DIR"]) == ("local", str(tmp_path / "swanlog"))
    bare = build_plan(load_recipe(TINY, [f"output.dir={tmp_path}"]))["env"]
    assert not {"WANDB_MODE", "MLFLOW_TRACKING_URI", "SWANLAB_MODE"} & set(bare)


@pytest.mark.parametrize(
    "name,value", [("WANDB_MODE", "online"), ("MLFLOW_TRACKING_URI", "http://mlflow:5000"), ("SWANLAB_MODE", "cloud")]
)
def test_a_shell_asking_for_online_logging_is_refused_with_the_fix(name, value, monkeypatch):
    from launcher.errors import RecipeError

    monkeypatch.setenv(name, value)
    with pytest.raises(RecipeError, match=f"output.report_to: .*{name}={value}.*Fix: unset {name}"):
        build_plan(load_recipe(TINY, [TRACKERS]))


def test_rope_scaling_without_a_factor_derives_it_from_cutoff_len_as_lf_does():
    plan = build_plan(load_recipe(TINY, ["model.rope_scaling={type: yarn}", "data.cutoff_len=5000"]))
    assert plan["context"] == {
        "max_position_embeddings": 2048,
        "length": 3 * 2048,  # ceil(5000 / 2048)
        "rope_scaling": {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 2048},
    }


def test_builtin_hidden_size_read_from_committed_config():
    config = json.loads((ROOT / "launcher/model/builtin/tiny_qwen2/config.json").read_text())
    ds = build_plan(load_recipe(TINY))["deepspeed"]
    assert ds["zero_optimization"]["reduce_bucket_size"] == config["hidden_size"] ** 2


@pytest.mark.parametrize(
    "launcher,needle",
    [
        ("torchrun", "torch.distributed.run"),
        ("accelerate", "accelerate.commands.launch"),
        ("deepspeed", "deepspeed.launcher.runner"),
    ],
)
def test_command_per_launcher(launcher, needle, tmp_path):
    plan = build_plan(load_recipe(TINY, [f"distributed.launcher={launcher}", f"output.dir={tmp_path}"]))
    argv = plan["nodes"][0]["argv"]
    assert needle in argv
    assert argv[-3:] == ["launcher.worker", "--plan", str(tmp_path / "plan.json")]


def test_multi_node_plan_has_a_command_per_node():
    plan = build_plan(load_recipe(TINY, ["distributed.nnodes=3", "distributed.master_addr=10.0.0.1"]))
    assert [n["node_rank"] for n in plan["nodes"]] == [0, 1, 2]
    assert "--node-rank=2" in plan["nodes"][2]["argv"]
    assert "--master-addr=10.0.0.1" in plan["nodes"][2]["argv"]
    assert plan["world"]["world_size"] == 6


def test_launch_plan_imports_no_torch():
    code = (
        "import sys; from launcher.cli import main; rc = main(['plan', %r]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'accelerate') if m in sys.modules); "
        "print('HEAVY', heavy); sys.exit(rc)" % QWEN
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for section in ("# recipe (resolved)", "# world", "# deepspeed config", "# environment", "# command per node"):
        assert section in proc.stdout
    assert "Qwen/Qwen2-7B-Instruct" in proc.stdout and '"auto"' not in proc.stdout


def _fake_nvidia_smi(tmp_path: Path, rows: list[str], monkeypatch) -> None:
    """An nvidia-smi on PATH that answers the planner's query with `rows` (this machine has no GPU)."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{row}'\n" for row in rows))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")


def test_bf16_on_a_pre_ampere_gpu_is_refused_with_the_fix(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, ["Tesla T4, 7.5, 15360", "Tesla T4, 7.5, 15360"], monkeypatch)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "plan", QWEN, "model.dtype=bf16"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "compute capability 8.0" in proc.stderr and "Tesla T4 (compute 7.5)" in proc.stderr
    assert "Fix: model.dtype=fp16" in proc.stderr


def test_dtype_auto_follows_the_gpu_generation(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, ["Tesla T4, 7.5, 15360", "NVIDIA A100-SXM4-80GB, 8.0, 81920"], monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # only the first row is visible
    older = build_plan(load_recipe(QWEN, ["model.dtype=auto"]))
    assert (older["world"]["gpus"], older["dtype"]) == (["Tesla T4"], "fp16")
    assert older["deepspeed"]["fp16"]["enabled"] is True and older["deepspeed"]["bf16"]["enabled"] is False
    _fake_nvidia_smi(tmp_path / "ampere", ["NVIDIA A100-SXM4-80GB, 8.0, 81920"] * 2, monkeypatch)
    newer = build_plan(load_recipe(QWEN, ["model.dtype=auto"]))
    assert newer["world"]["nproc_per_node"] == 2 and newer["dtype"] == "bf16"


def test_a_pipeline_stage_plans_before_the_stage_it_reads_has_run(tmp_path):
    """`launch plan` lists a missing earlier-stage output as not there yet; training refuses it."""
    inputs = [
        f"model.adapter={tmp_path / 'sft_qwen2'}",
        f"train.reward_model={tmp_path / 'rm_qwen2'}",
        f"output.dir={tmp_path / 'ppo'}",
    ]
    planned = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "plan", "recipes/ppo_qwen2.yaml", *inputs],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert planned.returncode == 0, planned.stderr
    notes = planned.stdout.split("# not there yet (training refuses until they are)\n")[1].split("\n\n")[0].splitlines()
    assert notes == [
        f"model.adapter = '{tmp_path / 'sft_qwen2'}' does not exist yet: run the stage that writes it first",
        f"train.reward_model = '{tmp_path / 'rm_qwen2'}' does not exist yet: run the stage that writes it first",
    ]
    trained = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "recipes/ppo_qwen2.yaml", *inputs],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert trained.returncode == 2 and "model.adapter" in trained.stderr and "no adapter_config.json" in trained.stderr
    assert not (tmp_path / "ppo").exists()


@pytest.mark.parametrize(
    "overrides, noted",
    [
        (["model.quantization={bits: 4}", "distributed.zero=3"], True),
        (["model.quantization={bits: 4}", "distributed.zero=2"], False),
        (["model.quantization={bits: 8}", "distributed.zero=3"], False),
        (["distributed.zero=3"], False),
    ],
    ids=["zero3-4bit", "zero2-4bit", "zero3-8bit", "zero3-no-quantization"],
)
def test_zero3_with_4bit_qlora_gets_a_note_of_what_is_verified(overrides, noted):
    from launcher.plan import format_plan

    text = format_plan(build_plan(load_recipe(TINY, overrides)))
    assert ("# notes" in text) == noted
    if noted:
        note = text.split("# notes\n", 1)[1].splitlines()[0]
        assert note.startswith("ZeRO-3 + 4-bit QLoRA: verified on CPU here")
        assert "bnb_4bit_quant_storage matches the compute dtype" in note and "not run or measured on GPU" in note


def test_a_tracker_release_its_transformers_callback_fails_with_is_refused_before_launch():
    """swanlab 0.7+ stops the run at its first step inside transformers' callback: refused by version, read from
    the installed package's metadata (here pytest's, against a bound below and above it)."""
    import dataclasses

    from launcher.errors import RecipeError
    from launcher.plan.trackers import TRACKERS, _refuse_untested

    assert TRACKERS["swanlab"].below == (0, 7)
    installed = dataclasses.replace(TRACKERS["swanlab"], package="pytest")
    _refuse_untested("pytest", dataclasses.replace(installed, below=(999, 0)))
    with pytest.raises(
        RecipeError, match=r"pytest \S+ is installed; .* before 1.0 only .* Fix: pip install 'pytest<1.0'"
    ):
        _refuse_untested("pytest", dataclasses.replace(installed, below=(1, 0)))
