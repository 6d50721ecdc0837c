"""Device discovery without torch: the visible GPUs (nvidia-smi), host memory, and how many processes a node may
start."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError

if TYPE_CHECKING:
    from launcher.plan.types import Gpus

CPU_PROCESSES = 2  # nproc_per_node: auto without GPUs -> two gloo processes

CPU_PROCESSES_PER_CORE = 4  # more CPU processes per core than this is refused


def detect_gpus() -> Gpus:
    """Visible NVIDIA GPUs without importing torch: nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES.

    {"count", "names", "compute_caps" (e.g. 8.0), "memory_gb" (total per GPU)}."""
    none: Gpus = {"count": 0, "names": [], "compute_caps": [], "memory_gb": []}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return none
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return none
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return none
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]
    if visible is not None:
        rows = rows[: len([v for v in visible.split(",") if v.strip()])]
    return {
        "count": len(rows),
        "names": [r[0] for r in rows],
        "compute_caps": [_number(r[1]) for r in rows],
        "memory_gb": [_number(r[2]) / 1024 for r in rows],
    }


def _number(text: str) -> float:
    """nvidia-smi prints [N/A] where a field is unknown; 0 then means unknown."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def host_memory_gb() -> float | None:
    """MemTotal of this machine (GiB) from /proc/meminfo, or None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def processes_per_node(setting: int | str, gpus: Gpus) -> int:
    """distributed.nproc_per_node on this machine: auto = one per visible GPU, else CPU_PROCESSES."""
    if setting == "auto":
        return gpus["count"] if gpus["count"] else CPU_PROCESSES
    check_nproc(int(setting), gpus)
    return int(setting)


def check_nproc(nproc: int, gpus: Gpus) -> None:
    """An explicit distributed.nproc_per_node must fit this node: one process per GPU; on CPU a
    few per core still plan a world size (tests, a cluster's layout), far more only time-slice."""
    if gpus["count"]:
        if nproc > gpus["count"]:
            raise RecipeError(
                f"distributed.nproc_per_node = {nproc}, but only {gpus['count']} GPU(s) are visible. "
                f"Fix: distributed.nproc_per_node=auto or <= {gpus['count']}"
            )
        return
    cores = os.cpu_count() or 1
    most = CPU_PROCESSES_PER_CORE * max(cores, CPU_PROCESSES)
    if nproc > most:
        raise RecipeError(
            f"distributed.nproc_per_node = {nproc}, but no GPU is visible and this machine has {cores} CPU "
            f"core(s): that many CPU processes only time-slice, each collective waiting for the slowest. "
            f"Fix: distributed.nproc_per_node=auto ({CPU_PROCESSES} CPU processes) or <= {most}, "
            "or run where the GPUs are"
        )
