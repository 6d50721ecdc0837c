"""This CPU's matmul peak, the reference of MFU on CPU: measured once per machine and cached.

Measuring takes about a second of a rank's start (more while other ranks start beside it), and the
figure only changes with the CPU, the torch build, the thread count or the dtype, so it is kept
in a small JSON file of the user's cache (`$LAUNCHER_CACHE`, else ~/.cache/llm-launcher) under
one key of those four. A file or entry that is not what this module writes is never trusted:
the peak is measured again and the file rewritten (whole, through a temporary file).
Delete the file to measure again; LAUNCHER_PEAK_TFLOPS overrides it (flops.py).
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch

CACHE_FILE = "cpu_peak.json"


def cache_path() -> Path:
    from launcher.model.builtin import builtin_cache_dir

    return builtin_cache_dir().parent / CACHE_FILE


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says where that is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(dtype: torch.dtype) -> str:
    """What the measured figure depends on: CPU, torch build, this process's thread count, dtype."""
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {dtype}"


def measured_cpu_peak_flops(dtype: torch.dtype, size: int = 512, repeats: int = 8) -> float:
    """FLOP/s of the best of a few square matmuls in this process, with its own thread count:
    on CPU the reference is what these cores do on a large matmul, not a data-sheet figure."""
    # ones, not random draws: the measurement must not move the run's seeded RNG, or a run that measures the
    # peak would sample differently from one that reads it from the cache
    a, b = torch.ones(size, size, dtype=dtype), torch.ones(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _valid_peak(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _cached_entries(path: Path) -> dict[str, float]:
    """The well-formed entries of the cache file; none when it is missing or malformed."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items() if _valid_peak(value)}


def cpu_peak_flops(dtype: torch.dtype) -> tuple[float, bool]:
    """(this CPU's peak FLOP/s in dtype, whether it came from the cache)."""
    from launcher.util.paths import write_new

    path, key = cache_path(), cache_key(dtype)
    entries = _cached_entries(path)
    if key in entries:
        return entries[key], True
    peak = measured_cpu_peak_flops(dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new(path, json.dumps({**entries, key: peak}, indent=1) + "\n")
    except OSError:  # a read-only cache: measure at every start, as before the cache
        pass
    return peak, False
