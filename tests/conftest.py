"""Shared fixtures: the real `launch` CLI in a subprocess, a free rendezvous port, and a
once-per-session warm-up of DeepSpeed's CPU ops and the builtin model."""

from __future__ import annotations

import ast
import hashlib
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import time
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
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


class Terminal:
    """`launch ARGS` with stdin and stdout on a pseudo-terminal (an interactive session); stderr dropped."""

    def __init__(self, args: list[str]):
        self.primary, secondary = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", *args],
            cwd=ROOT,
            stdin=secondary,
            stdout=secondary,
            stderr=subprocess.DEVNULL,
        )
        os.close(secondary)
        self.seen = b""

    def read_until(self, marker: bytes, count: int, timeout: float = 180) -> None:
        """Read until `marker` has appeared `count` times in all output so far."""
        deadline = time.monotonic() + timeout
        while self.seen.count(marker) < count:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.seen.decode(errors="replace")
            if select.select([self.primary], [], [], 1)[0]:
                self.seen += os.read(self.primary, 4096)

    def type(self, line: str) -> None:
        os.write(self.primary, line.encode() + b"\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        os.close(self.primary)


def shared_dir(tmp_path_factory) -> Path:
    """A folder every process of this test session sees: under pytest-xdist each worker has its own
    basetemp, and their common parent belongs to this session alone."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def warm(tmp_path_factory):
    """Compile DeepSpeed's CPU ops and build the builtin model once per test session."""
    from filelock import FileLock

    from launcher.plan import torch_extensions_dir

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": torch_extensions_dir()}
    with FileLock(
        shared_dir(tmp_path_factory) / "warm.lock", timeout=900
    ):  # one xdist worker compiles, the other waits
        subprocess.run(
            [sys.executable, "-m", "launcher.backends.prebuild", "ShareMemCommBuilder"],
            check=True,
            env=env,
            timeout=600,
        )
        subprocess.run(
            [sys.executable, "-c", "from launcher.model.builtin import materialize; materialize('builtin:tiny-qwen2')"],
            check=True,
            timeout=300,
        )


# 6 steps, checkpoints at 3 and 6; LoRA under ZeRO-3 and full fine-tuning under ZeRO-2 are each
# run once and shared by the resume and consolidate tests
# every DeepSpeed (zero, offload) option the planner and the method table list
ZERO_OPTIONS = [
    (0, "none"),
    (1, "none"),
    (1, "optimizer"),
    (2, "none"),
    (2, "optimizer"),
    (3, "none"),
    (3, "optimizer"),
    (3, "all"),
]
SHORT_RUN = ("train.max_steps=6", "train.save_steps=3", "train.logging_steps=1")
# with the chunked loss (what auto picks for a real vocabulary): test_fsdp.py holds its steps equal to FSDP2's
# plain loss, test_resume.py resumes it exactly; under ZeRO-3 it once crashed at the first backward
LORA_ZERO3_RUN = ("distributed.zero=3", "train.loss_kernel=chunked", *SHORT_RUN)
# the full run trains with a registered template other than the tokenizer's own, so chat tests can check
# that a run's output renders prompts as its training did (tests/test_chat_template.py)
FULL_ZERO2_RUN = ("method={name: full}", "distributed.zero=2", "model.template=alpaca", *SHORT_RUN)
# LoRA under FSDP2: shared by the FSDP, resume and consolidate tests
FSDP_LORA_RUN = ("distributed.engine=fsdp", *SHORT_RUN)


def finished_runs(tmp_path_factory, recipe: str):
    """`run(*overrides)`: output.dir of a finished run of `recipe` with these overrides, run once per session
    (across xdist workers too), so tests in several files can check the same run."""
    from filelock import FileLock

    runs = shared_dir(tmp_path_factory) / "finished_runs"
    runs.mkdir(exist_ok=True)

    def run(*overrides: str) -> Path:
        name = hashlib.sha256("\n".join((recipe, *overrides)).encode()).hexdigest()[:16]
        out, done = runs / name, runs / f"{name}.done"
        with FileLock(runs / f"{name}.lock", timeout=900):  # another worker may be training this very run
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)  # a failed attempt of another worker
                proc = run_launch([recipe, f"output.dir={out}", f"distributed.master_port={free_port()}", *overrides])
                assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
                done.touch()
        return out

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, warm):
    """`tiny_run(*overrides)`: output.dir of a finished recipes/sft_tiny.yaml run with these overrides (once per session)."""
    return finished_runs(tmp_path_factory, "recipes/sft_tiny.yaml")


RM_PAIRS = 8  # micro 4 x 2 ranks: every step of RM_RUN sees all the pairs, so the loss on them must fall
RM_RUN = (
    "distributed.zero=2",
    "train.max_steps=6",
    "train.logging_steps=1",
    f"data.max_samples={RM_PAIRS}",
    "data.cutoff_len=64",
    "train.micro_batch_size=4",
    "train.grad_accum=1",
    "train.warmup_ratio=0",
    "train.scheduler=constant",
)


@pytest.fixture(scope="session")
def rm_run(tmp_path_factory, warm) -> Path:
    """output.dir of a finished recipes/rm_tiny.yaml run (RM_RUN), shared by the rm, ppo and grpo tests."""
    return finished_runs(tmp_path_factory, "recipes/rm_tiny.yaml")(*RM_RUN)


def imported_after(code: str, modules: tuple[str, ...], timeout: float = 120) -> list[str]:
    """Which of `modules` a fresh interpreter holds after running `code` in the repo root: the check that
    a light path (planning, a registry lookup) stays free of heavy libraries."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ast.literal_eval(proc.stdout.splitlines()[-1])


def wait_timed(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """proc's exit code, and the seconds from this call until it exited (a stop's latency)."""
    start = time.monotonic()
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - start


def greedy_ids(
    prompt_ids: list[int], tokens: int, model: str | Path | None = None, adapter: str | Path | None = None
) -> str:
    """The oracle of generation tests: transformers' own greedy generate from these prompt ids on a model folder
    (default: the builtin model) (+ a PEFT adapter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.model.builtin import materialize

    folder = model or materialize("builtin:tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    network = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter)
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = network.eval().generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def greedy(messages: list[dict], tokens: int, adapter: str | Path | None = None) -> str:
    """greedy_ids over apply_chat_template (the tokenizer's own template) on the builtin model (+ a PEFT adapter)."""
    from transformers import AutoTokenizer

    from launcher.model.builtin import materialize

    folder = materialize("builtin:tiny-qwen2")
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True
    )
    return greedy_ids(ids["input_ids"], tokens, folder, adapter)


TIERS = ("unit", "multiproc", "services", "gpu")


def pytest_collection_modifyitems(config, items):
    """Every test has exactly one tier (pyproject.toml's markers), so `-m unit` stays the whole fast tier.
    Tests marked gpu skip where torch sees no CUDA device (CI, this machine); bench/gpu_check.py runs them."""
    untiered = [
        f"{item.nodeid} ({', '.join(tiers) or 'none'})"
        for item in items
        if len(tiers := [m.name for m in item.iter_markers() if m.name in TIERS]) != 1
    ]
    if untiered:
        raise pytest.UsageError(
            f"tests need exactly one tier mark of {', '.join(TIERS)} "
            f"(pytestmark or @pytest.mark.<tier>): {'; '.join(untiered)}"
        )
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:  # torch is imported only to skip gpu tests (a `-m unit` collection of a torch-free file stays light)
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run bench/gpu_check.py on one)")
    for item in gpu:
        item.add_marker(skip)
