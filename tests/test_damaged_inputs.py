"""Damaged inputs of `launch consolidate`, `merge` and `chat`, through the real CLI: a truncated,
garbage or missing checkpoint file, broken JSON, a base of the wrong shape. Each is refused with
exit 2 and one message naming the file, never a library traceback; no --out is left behind (the
output is staged beside it and renamed when whole), and the same command with the file restored
succeeds (checked once per verb and where the failure comes mid-write). The inputs are copies of real runs' checkpoints (tests/conftest.py tiny_run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FULL_ZERO2_RUN, LORA_ZERO3_RUN, run_launch

pytestmark = pytest.mark.multiproc

STEP = "global_step6"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def remove(path: Path) -> None:
    path.unlink()


def bad_json(path: Path) -> None:
    path.write_text(path.read_text()[:-20])  # cut mid-object, as a copy interrupted half-way


@pytest.fixture(scope="module")
def sources(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """Pristine inputs: the two runs' checkpoints, the LoRA run's adapter, the builtin base, the base
    re-saved in shards, and a base of another shape (same names, a narrower MLP)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.model.builtin import materialize

    root = tmp_path_factory.mktemp("sources")
    lora_run, full_run = tiny_run(*LORA_ZERO3_RUN), tiny_run(*FULL_ZERO2_RUN)
    base = Path(materialize("builtin:tiny-qwen2"))
    adapter = root / "adapter"
    adapter.mkdir()
    for path in lora_run.iterdir():
        if path.is_file():
            shutil.copy2(path, adapter / path.name)
    sharded = root / "sharded_base"
    AutoModelForCausalLM.from_pretrained(base).save_pretrained(sharded, max_shard_size="2MB")
    config = AutoConfig.from_pretrained(base)
    config.intermediate_size //= 2
    wrong = root / "wrong_base"
    AutoModelForCausalLM.from_config(config).save_pretrained(wrong)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(base / name, sharded / name)
        shutil.copy2(base / name, wrong / name)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    return {
        "lora_ckpt": lora_run / "checkpoint-6",
        "full_ckpt": full_run / "checkpoint-6",
        "adapter": adapter,
        "base": base,
        "sharded_base": sharded,
        "wrong_base": wrong,
    }


def _command(verb: str, inputs: dict[str, Path], out: Path, base: str = "base") -> list[str]:
    if verb == "consolidate-lora":
        return ["consolidate", str(inputs["lora_ckpt"]), "--out", str(out)]
    if verb == "consolidate-full":
        return ["consolidate", str(inputs["full_ckpt"]), "--out", str(out)]
    if verb == "merge":
        return ["merge", "--base", str(inputs[base]), "--adapter", str(inputs["adapter"]), "--out", str(out)]
    return [
        "chat",
        "--model",
        str(inputs[base]),
        "--adapter",
        str(inputs["adapter"]),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]


def _assert_refused(proc: subprocess.CompletedProcess, named: str, out: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and named in errors[0], proc.stderr[-3000:]  # one message (after any library progress bars)
    assert not out.exists(), "a refused command left its --out behind"
    assert not list(out.parent.glob(f"{out.name}.partial-*")), "a refused command left its staging folder behind"


# (verb, damaged input, file inside it, damage, retry): the retry (same command, file restored) runs
# once per verb and where the failure comes after the output was begun; the refusal runs for all
CASES = [
    ("consolidate-lora", "lora_ckpt", f"{STEP}/zero_pp_rank_1_mp_rank_00_optim_states.pt", truncate, True),
    ("consolidate-lora", "lora_ckpt", f"{STEP}/zero_pp_rank_0_mp_rank_00_optim_states.pt", garbage, False),
    ("consolidate-lora", "lora_ckpt", f"{STEP}/zero_pp_rank_1_mp_rank_00_model_states.pt", remove, False),
    ("consolidate-lora", "lora_ckpt", f"{STEP}/zero_pp_rank_1_mp_rank_00_model_states.pt", truncate, False),
    ("consolidate-lora", "lora_ckpt", "adapter_config.json", bad_json, False),
    ("consolidate-full", "full_ckpt", f"{STEP}/mp_rank_00_model_states.pt", remove, False),
    # rank 1's shard is first read while the model is being written: the staging folder must go
    ("consolidate-full", "full_ckpt", f"{STEP}/zero_pp_rank_1_mp_rank_00_optim_states.pt", truncate, True),
    ("merge", "adapter", "adapter_config.json", remove, False),
    ("merge", "adapter", "adapter_config.json", bad_json, False),
    ("merge", "adapter", "adapter_model.safetensors", truncate, True),
    ("merge", "adapter", "adapter_model.safetensors", garbage, False),
    ("merge", "adapter", "adapter_model.safetensors", remove, False),
    ("merge", "base", "model.safetensors", truncate, False),
    ("merge", "base", "config.json", bad_json, False),
    ("merge", "sharded_base", "model-00002-of-00004.safetensors", remove, True),
    ("merge", "sharded_base", "model.safetensors.index.json", bad_json, False),
    ("chat", "adapter", "adapter_config.json", remove, True),
    ("chat", "adapter", "adapter_config.json", bad_json, False),
    ("chat", "adapter", "adapter_model.safetensors", truncate, False),
    ("chat", "base", "model.safetensors", garbage, False),
    ("chat", "sharded_base", "model-00002-of-00004.safetensors", remove, False),
]


@pytest.mark.parametrize(
    "verb, damaged, file, damage, retry", CASES, ids=[f"{v}-{d.__name__}-{Path(f).name}" for v, _, f, d, _ in CASES]
)
def test_a_damaged_file_is_refused_by_name_and_a_retry_succeeds(sources, tmp_path, verb, damaged, file, damage, retry):
    inputs = dict(sources)
    inputs[damaged] = tmp_path / damaged
    shutil.copytree(sources[damaged], inputs[damaged])
    base = damaged if damaged.endswith("base") else "base"
    if damaged == "sharded_base":
        files = json.loads((sources[damaged] / "model.safetensors.index.json").read_text())["weight_map"].values()
        assert Path(file).name in set(files) or file.endswith(".json")
    damage(inputs[damaged] / file)
    out = tmp_path / "out"
    _assert_refused(run_launch(_command(verb, inputs, out, base)), Path(file).name, out)
    if not retry:
        return
    shutil.copy2(sources[damaged] / file, inputs[damaged] / file)  # the retry, same command, file restored
    proc = run_launch(_command(verb, inputs, out, base))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert verb == "chat" or any(out.glob("*.safetensors"))
    assert not list(tmp_path.glob("out.partial-*"))


@pytest.mark.parametrize("verb", ["merge", "chat"])
def test_a_base_of_another_shape_is_refused(sources, tmp_path, verb):
    out = tmp_path / "out"
    proc = run_launch(_command(verb, sources, out, base="wrong_base"))
    _assert_refused(proc, "does not fit", out)
    assert "wrong_base" in proc.stderr and "mlp" in proc.stderr


def test_a_staging_folder_left_by_a_killed_run_does_not_block_the_retry(sources, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    out = tmp_path / "merged"
    stale = tmp_path / f"merged.partial-{dead.pid}"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    proc = run_launch(_command("merge", sources, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists() and (out / "model.safetensors").is_file()
    assert not (out / "model-00001-of-00002.safetensors").exists()
