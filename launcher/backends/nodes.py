"""Which node this `launch` is, and what node 0 checks before any process starts. Torch-free.

The node rank comes from `--node-rank`, else NODE_RANK, else SLURM_NODEID inside a SLURM job,
else 0. A hostfile run is started once, on its first host (node 0), which starts the rest.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from launcher.backends.slurm import allocation
from launcher.errors import RecipeError
from launcher.util.net import port_taken

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def this_node_rank(cli_rank: int | None, plan: Plan) -> int:
    nnodes, hostfile = plan["world"]["nnodes"], plan["recipe"]["distributed"]["hostfile"]
    env_rank = os.environ.get("NODE_RANK")
    slurm = allocation() if hostfile is None else None
    if cli_rank is not None:
        rank, source = cli_rank, "--node-rank"
    elif env_rank is not None:
        if not env_rank.strip().isdigit():
            raise RecipeError(
                f"NODE_RANK = {env_rank!r} is not a node rank. Fix: export NODE_RANK=0..{nnodes - 1}, or unset it"
            )
        rank, source = int(env_rank), "NODE_RANK"
    elif slurm is not None:
        rank, source = slurm["node_rank"], "SLURM_NODEID"
    elif nnodes > 1 and hostfile is None:
        raise RecipeError(
            f"distributed.nnodes = {nnodes}: this node's rank is unknown. Fix: run `launch RECIPE "
            f"--node-rank K` (or export NODE_RANK=K) on each node, K = 0..{nnodes - 1}"
        )
    else:
        return 0
    if hostfile is not None and rank != 0:
        raise RecipeError(
            f"{source} {rank} with distributed.hostfile: a hostfile run is started once, on its first "
            "host, which starts the other nodes over ssh. Fix: run it on the first host without a node rank"
        )
    if nnodes == 1 and rank > 0 and hostfile is None:  # a node rank alone: the other two keys are missing
        raise RecipeError(
            f"{source} {rank} makes this one node of several, but the recipe has one node. Fix: also set "
            "distributed.nnodes (how many nodes) and distributed.master_addr (node 0's address), e.g. "
            f"`launch RECIPE distributed.nnodes={rank + 1} distributed.master_addr=<node-0 address> "
            f"--node-rank {rank}`"
        )
    if not 0 <= rank < nnodes:
        raise RecipeError(f"{source} {rank} is outside 0..{nnodes - 1} (distributed.nnodes = {nnodes})")
    return rank


def require_free_port(port: int) -> None:
    """Node 0 hosts the rendezvous store on master_port: refuse a port another process listens on now,
    rather than hang or fail in the ranks."""
    why = port_taken(port)
    if why:
        raise RecipeError(
            f"distributed.master_port = {port} is already in use on this machine (node 0): {why}. "
            f"Fix: pick a free port, e.g. distributed.master_port={port + 1}, or stop the process "
            f"holding it (`ss -ltnp 'sport = :{port}'`)"
        )


def check_before_launch(plan: Plan, node_rank: int) -> None:
    """Refuse before launch what would otherwise fail or hang inside the ranks."""
    if node_rank != 0:
        return
    require_free_port(plan["world"]["master_port"])
    if plan["nodes"][0].get("host"):
        from launcher.backends.ssh import check_hosts

        check_hosts(plan)
