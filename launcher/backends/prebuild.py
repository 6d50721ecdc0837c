"""Build DeepSpeed's JIT-compiled CPU ops once, in one process, before the ranks start.

On CPU, DeepSpeed compiles its shared-memory comm op (and CPU Adam for ZeRO-Offload) on first
use. Two ranks compiling the same extension at once can abort (seen here: SIGABRT on a cold
cache), and compiling is about a minute; doing it here once makes every later run start fast.
Usage: python -m launcher.backends.prebuild ShareMemCommBuilder [CPUAdamBuilder ...]
       python -m launcher.backends.prebuild --cpu-machine   (`make install`: every CPU op, on a machine without CUDA)
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.plan.types import Plan

STAMP = "launcher-prebuilt.json"  # in TORCH_EXTENSIONS_DIR: which ops were built, against which versions


def ops_for(plan: Plan) -> list[str]:
    """The DeepSpeed op builders a CPU run of this plan will load."""
    if plan["world"]["device"] != "cpu" or plan["deepspeed"] is None:
        return []
    ops = ["ShareMemCommBuilder"]
    if "offload_optimizer" in plan["deepspeed"].get("zero_optimization", {}):  # a user's JSON may have none
        ops.append("CPUAdamBuilder")
    return ops


def _versions() -> dict:
    return {"torch": version("torch"), "deepspeed": version("deepspeed")}


def _recorded(extensions_dir: str) -> set[str]:
    """Ops a previous prebuild compiled in this folder against the installed torch and DeepSpeed."""
    try:
        stamp = json.loads((Path(extensions_dir) / STAMP).read_text())
    except (OSError, ValueError):
        return set()
    intact = all(Path(f).is_file() for f in stamp.get("libraries", []))  # a cleaned cache must be rebuilt
    return set(stamp.get("ops", [])) if intact and stamp.get("versions") == _versions() else set()


def already_built(ops: list[str], extensions_dir: str) -> bool:
    """True when these ops were prebuilt here before: the ranks then load them from the cache,
    and the separate build process (a DeepSpeed import, ~2.5 s per launch) is skipped."""
    return set(ops) <= _recorded(extensions_dir)


def main(names: list[str]) -> None:
    from deepspeed.accelerator import get_accelerator

    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is not None:
            builder.load(verbose=False)
    folder = os.environ["TORCH_EXTENSIONS_DIR"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    ops = sorted(_recorded(folder) | set(names))
    libraries = sorted(str(f) for f in Path(folder).glob("*/*.so"))
    (Path(folder) / STAMP).write_text(json.dumps({"ops": ops, "versions": _versions(), "libraries": libraries}))


CPU_OPS = ["ShareMemCommBuilder", "CPUAdamBuilder"]


def prebuild_cpu_machine() -> None:
    """At install: where torch sees no CUDA device, build every CPU op a run may load into the cache
    runs use, so no first run (or test) waits a minute and a half for the compiler."""
    import torch

    if torch.cuda.is_available():
        print("[prebuild] a CUDA device is visible: DeepSpeed's CPU ops are not needed here", flush=True)
        return
    from launcher.plan.env import torch_extensions_dir

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", torch_extensions_dir())
    os.environ["DS_ACCELERATOR"] = "cpu"  # read when deepspeed is first imported, below
    if already_built(CPU_OPS, os.environ["TORCH_EXTENSIONS_DIR"]):
        return
    print(f"[prebuild] compiling DeepSpeed's CPU ops {', '.join(CPU_OPS)} (about 2 minutes, once)", flush=True)
    main(CPU_OPS)


if __name__ == "__main__":
    if sys.argv[1:] == ["--cpu-machine"]:
        prebuild_cpu_machine()
    else:
        main(sys.argv[1:])
