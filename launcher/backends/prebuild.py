"""Build DeepSpeed's JIT-compiled CPU ops once, in one process, before the ranks start.

On CPU, DeepSpeed compiles its shared-memory comm op (and CPU Adam for ZeRO-Offload) on first
use. Two ranks compiling the same extension at once can abort (seen here: SIGABRT on a cold
cache), and compiling is about a minute; doing it here once makes every later run start fast.
Usage: python -m launcher.backends.prebuild ShareMemCommBuilder [CPUAdamBuilder ...]
"""

from __future__ import annotations

import sys


def ops_for(plan: dict) -> list[str]:
    """The DeepSpeed op builders a CPU run of this plan will load."""
    if plan["world"]["device"] != "cpu" or plan["deepspeed"] is None:
        return []
    ops = ["ShareMemCommBuilder"]
    if "offload_optimizer" in plan["deepspeed"]["zero_optimization"]:
        ops.append("CPUAdamBuilder")
    return ops


def main(names: list[str]) -> None:
    from deepspeed.accelerator import get_accelerator

    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is not None:
            builder.load(verbose=False)


if __name__ == "__main__":
    main(sys.argv[1:])
