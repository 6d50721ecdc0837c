"""Shared by bench/consolidate.py and bench/merge.py: a seeded mid-size Qwen2 model on disk, and
running a command in its own process to measure its wall time and peak RSS."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.overhead import ROOT, base_env

# ~75M parameters with the builtin tokenizer's 2048-token vocabulary: ~300 MB of fp32 weights
MODEL_CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 10,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_window_layers": 10,
}


def make_model(folder: Path) -> Path:
    """A Qwen2 model with MODEL_CONFIG and the builtin tokenizer, seeded weights, saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.model.builtin import materialize

    if (folder / "config.json").is_file():
        return folder
    tiny = Path(materialize("builtin:tiny-qwen2"))
    values = {**json.loads((tiny / "config.json").read_text()), **MODEL_CONFIG}
    values.pop("layer_types", None)  # derived from the layer count
    config = AutoConfig.for_model(**values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (tiny / name).is_file():
            shutil.copy2(tiny / name, folder / name)
    return folder


def parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total


# ru_maxrss of a child forked from this (large) process starts at this process's peak (Linux carries
# the pre-exec high-water mark over exec), so the command runs under a small fresh interpreter
# that forks it and reports the command's own peak.
RSS_PROBE = (
    "import os, subprocess, sys; proc = subprocess.Popen(sys.argv[1:]); _, status, usage = os.wait4(proc.pid, 0); "
    "print(f'peak_rss_kib={usage.ru_maxrss}', flush=True); sys.exit(os.waitstatus_to_exitcode(status))"
)


def measure(argv: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `argv` run to completion in its own process."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(
            [sys.executable, "-c", RSS_PROBE, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or base_env(),
            cwd=ROOT,
        )
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({code}); see {log}")
    peak = [line for line in log.read_text().splitlines() if line.startswith("peak_rss_kib=")][-1]
    return wall, int(peak.split("=")[1]) / 1024  # Linux reports KiB


LAUNCH = (sys.executable, "-m", "launcher.cli")  # the `launch` command, run by this very interpreter


def load_dir(folder: Path) -> dict:
    """Every tensor of the safetensors files in `folder`."""
    from safetensors.torch import load_file

    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def same_tensor_dirs(a: Path, b: Path, atol: float = 0.0) -> bool:
    """The two folders' safetensors hold the same names, and tensors equal within atol (0: bit for bit)."""
    import torch

    left, right = load_dir(a), load_dir(b)
    return left.keys() == right.keys() and all(torch.allclose(left[k], right[k], rtol=0, atol=atol) for k in left)


Runs = dict[str, list[tuple[float, float]]]  # command name -> (wall s, peak RSS MB) per repetition


def bench_args(doc: str):
    """--repeats and --out (the docs page whose section the bench rewrites)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    return parser.parse_args()


def alternate(commands: dict[str, list[str]], repeat: int, logs: Path, results: Runs, label: str = "") -> None:
    """Run every command once, in order on even repetitions and reversed on odd ones."""
    names = list(commands) if repeat % 2 == 0 else list(commands)[::-1]
    for name in names:
        log = logs / f"{label}{repeat}-{name.replace(' ', '_')}.log"
        results.setdefault(name, []).append(measure(commands[name], log))
        print(f"{label}{name}: {results[name][-1][0]:.2f} s, {results[name][-1][1]:.0f} MB", flush=True)


def table_row(name: str, runs: list[tuple[float, float]]) -> str:
    """`| name | wall median (range) | peak median (range) |`."""
    from bench.overhead import spread

    walls, peaks = [w for w, _ in runs], [p for _, p in runs]
    return (
        f"| {name} | {statistics.median(walls):.2f} ({spread(walls)}) | "
        f"{statistics.median(peaks):.0f} ({spread(peaks)}) |"
    )


def ratios(ours: list[tuple[float, float]], theirs: list[tuple[float, float]]) -> tuple[float, float]:
    """(peak RSS ratio, time ratio) of the medians."""
    return (
        statistics.median(p for _, p in ours) / statistics.median(p for _, p in theirs),
        statistics.median(w for w, _ in ours) / statistics.median(w for w, _ in theirs),
    )
