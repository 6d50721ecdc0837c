"""Elastic restarts under torchrun's static rendezvous (--master-addr/--master-port, node ranks kept).

The static rendezvous keeps one TCPStore for the whole job, and a restarted worker group reads
the dead group's entries from it: gloo connects to addresses nobody listens on any more
("Gloo connectFullMesh failed ... Connection refused"), NCCL picks up a stale unique id. From
the first restart on, the worker sets up the default process group itself, on a key prefix of
its attempt; transformers, accelerate and DeepSpeed find it initialized and use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from launcher.util.timeouts import recipe_timeout_s


def isolate_restart_attempt(plan: Mapping[str, Any]) -> None:
    """Call before TrainingArguments in every rank; a no-op in the first attempt."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = timedelta(seconds=recipe_timeout_s(plan["recipe"]))
    if plan["world"]["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    dist.init_process_group(
        plan["world"]["backend"],
        store=dist.PrefixStore(f"launcher/attempt_{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
