"""The rendezvous port and the command that starts one node's ranks with the chosen launcher."""

from __future__ import annotations

import base64
import json
import socket
import sys
from typing import TYPE_CHECKING

from launcher.errors import RecipeError, shown
from launcher.plan.hostfile import host_key
from launcher.recipe.schema import DEFAULT_MASTER_PORT

if TYPE_CHECKING:
    from launcher.plan.types import World
    from launcher.recipe.types import DistributedSection, Recipe


def master_port(port: int | str, nnodes: int) -> int:
    """distributed.master_port: auto is a port free now on a single node (as torchrun --standalone picks one),
    the fixed default on several nodes, which must agree on it without talking first."""
    if port != "auto":
        return int(port)
    if nnodes > 1:
        return DEFAULT_MASTER_PORT
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def master_address(addr: str | None, hosts: list | None, nnodes: int) -> str:
    """Node 0's address: distributed.master_addr, else the hostfile's first host, else this machine
    (one node). Only a host name or an IP address: anything else reaches the engine's command line."""
    addr = addr or (hosts[0].name if hosts else None)
    if addr is None:
        if nnodes > 1:
            raise RecipeError(
                f"distributed.nnodes = {nnodes} needs distributed.master_addr (the address of node 0), "
                "a distributed.hostfile, or a SLURM allocation. Fix: set distributed.master_addr: <node-0 address>"
            )
        return "127.0.0.1"
    if host_key(addr) is None:
        raise RecipeError(
            f"distributed.master_addr = {shown(addr)}: not a host name or IP address. Fix: set it to node 0's "
            "name or address, e.g. distributed.master_addr: 10.0.0.1"
        )
    return addr


def _torchrun(dist: DistributedSection, world: World, node_rank: int, worker: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={world['nnodes']}",
        f"--nproc-per-node={world['nproc_per_node']}",
        f"--node-rank={node_rank}",
        f"--master-addr={world['master_addr']}",
        f"--master-port={world['master_port']}",
        f"--max-restarts={dist['max_restarts']}",
        *worker,
    ]


def _accelerate(dist: DistributedSection, world: World, node_rank: int, worker: list[str]) -> list[str]:
    # --multi_gpu selects accelerate's torchrun-based launcher; on CPU the worker's
    # TrainingArguments(use_cpu=True) picks gloo (accelerate's --cpu mode wants mpirun).
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={world['world_size']}",
        f"--num_machines={world['nnodes']}",
        f"--machine_rank={node_rank}",
        f"--main_process_ip={world['master_addr']}",
        f"--main_process_port={world['master_port']}",
        f"--max_restarts={dist['max_restarts']}",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        *worker,
    ]


def _deepspeed(dist: DistributedSection, world: World, node_rank: int, worker: list[str]) -> list[str]:
    rendezvous = [
        f"--node_rank={node_rank}",
        f"--master_addr={world['master_addr']}",
        f"--master_port={world['master_port']}",
    ]
    if world["nnodes"] > 1:
        # DeepSpeed's runner wants a hostfile for several nodes and fans out itself; with one
        # command per node (ours) its per-node launcher takes the world as base64 JSON instead,
        # as the runner's own --no_ssh mode does. Host names are only labels there.
        world_info = {f"node{k}": list(range(world["nproc_per_node"])) for k in range(world["nnodes"])}
        encoded = base64.urlsafe_b64encode(json.dumps(world_info).encode()).decode()
        start = ["-u", "-m", "deepspeed.launcher.launch", f"--world_info={encoded}"]
    else:  # one node; hostfile fan-out is the ssh backend's job
        start = [
            "-m",
            "deepspeed.launcher.runner",
            f"--num_nodes={world['nnodes']}",
            f"--num_gpus={world['nproc_per_node']}",
        ]
    return [sys.executable, *start, *rendezvous, "--no_local_rank", "--module", *worker[1:]]


# distributed.launcher -> the command that starts every rank of one node with it
LAUNCHERS = {"torchrun": _torchrun, "accelerate": _accelerate, "deepspeed": _deepspeed}


def node_argv(recipe: Recipe, world: World, node_rank: int, plan_file: str) -> list[str]:
    """The command that starts every rank of one node with the chosen launcher."""
    dist = recipe["distributed"]
    return LAUNCHERS[dist["launcher"]](dist, world, node_rank, ["-m", "launcher.worker", "--plan", plan_file])
