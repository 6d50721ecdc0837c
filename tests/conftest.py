"""Shared fixtures: the real `launch` CLI in a subprocess, a free rendezvous port, and a
once-per-session warm-up of DeepSpeed's CPU ops and the builtin model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_launch(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`launch ARGS` through the real entry point, from the repo root; output captured."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def warm():
    """Compile DeepSpeed's CPU ops and build the builtin model once per test session."""
    from launcher.plan import torch_extensions_dir

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": torch_extensions_dir()}
    subprocess.run([sys.executable, "-m", "launcher.backends.prebuild", "ShareMemCommBuilder"],
                   check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-c", "from launcher.builtin import materialize; materialize('builtin:tiny-qwen2')"],
                   check=True, timeout=300)


# 6 steps, checkpoints at 3 and 6; LoRA under ZeRO-3 and full fine-tuning under ZeRO-2 are each
# run once and shared by the resume and consolidate tests
SHORT_RUN = ("train.max_steps=6", "train.save_steps=3", "train.logging_steps=1")
LORA_ZERO3_RUN = ("distributed.zero=3", *SHORT_RUN)
FULL_ZERO2_RUN = ("method={name: full}", "distributed.zero=2", *SHORT_RUN)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, warm):
    """`tiny_run(*overrides)`: output.dir of a finished recipes/sft_tiny.yaml run with these overrides,
    run once per session, so tests in several files can check the same run (resume, consolidate)."""
    finished: dict[tuple, Path] = {}

    def run(*overrides: str) -> Path:
        if overrides not in finished:
            out = tmp_path_factory.mktemp("tiny_run") / "run"
            proc = run_launch(["recipes/sft_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}",
                               *overrides])
            assert proc.returncode == 0, proc.stderr[-5000:]
            finished[overrides] = out
        return finished[overrides]

    return run


def greedy(messages: list[dict], tokens: int, adapter: str | Path | None = None) -> str:
    """The oracle of generation tests: transformers' own greedy generate over apply_chat_template on the builtin
    model (+ a PEFT adapter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.builtin import materialize

    folder = materialize("builtin:tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip where torch sees no CUDA device (CI, this machine); bench/gpu_check.py runs them."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.py on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
