"""SLURM: this node's place in an allocation, and the batch script `launch sbatch` writes.

The script runs one task per node with srun; each task runs `launch RECIPE ...`, which finds
its node rank (SLURM_NODEID), the node count and the master (the job's first host) here.
Every value that reaches the script is validated and shlex-quoted; #SBATCH lines carry only
literal values (sbatch does not expand variables there). Torch-free.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.recipe.schema import DEFAULT_MASTER_PORT, SLURM

if TYPE_CHECKING:
    from launcher.recipe.types import DistributedSection, Recipe

SAFE_WORD = re.compile(r"[A-Za-z0-9_.,+-]+")  # partition, account, job name
SAFE_PATH = re.compile(r"[A-Za-z0-9_./+%-]+")  # #SBATCH --output: sbatch splits on spaces, expands no quotes
TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE")


def _first_host(nodelist: str) -> str:
    """The job's first host name, expanded by `scontrol show hostnames` (it owns SLURM's range syntax)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        raise RecipeError(
            f"SLURM allocation: `scontrol show hostnames {nodelist}` failed ({err}). "
            "Fix: run inside the job with SLURM's tools on PATH, or set distributed.master_addr"
        ) from None
    if not out:
        raise RecipeError(f"SLURM allocation: SLURM_JOB_NODELIST={nodelist!r} expands to no host")
    return out[0]


def allocation(env: Mapping[str, str] | None = None) -> dict | None:
    """nnodes, this node's rank and the job id inside a SLURM job, else None.

    In an srun step the step's nodes count (srun may use part of the job); in the batch script
    itself only a one-node job can run `launch` directly, the others need one srun task per node."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or "SLURM_NNODES" not in env:
        return None
    job = env["SLURM_JOB_ID"]
    if "SLURM_STEP_ID" not in env:  # the batch script (or salloc's shell), not an srun task
        if int(env["SLURM_NNODES"]) > 1:
            raise RecipeError(
                f"SLURM job {job} has {env['SLURM_NNODES']} nodes but `launch` runs once, in the batch "
                "script: the other nodes would never join. Fix: `srun --ntasks-per-node=1 launch RECIPE ...`, "
                "or write the script with `launch sbatch`"
            )
        return {"job_id": job, "nnodes": 1, "node_rank": 0, "nodelist": env.get("SLURM_JOB_NODELIST", "")}
    nnodes, tasks = int(env.get("SLURM_STEP_NUM_NODES", env["SLURM_NNODES"])), int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if tasks != nnodes:
        raise RecipeError(
            f"SLURM step {job}.{env['SLURM_STEP_ID']} runs {tasks} tasks on {nnodes} node(s); `launch` "
            "starts every process of its node itself. Fix: srun --ntasks-per-node=1"
        )
    return {
        "job_id": job,
        "nnodes": nnodes,
        "node_rank": int(env.get("SLURM_NODEID", "0")),
        "nodelist": env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""),
    }


def apply_allocation(recipe: Recipe, alloc: dict) -> None:
    """Take nnodes and (unless the recipe names one) the master address from the allocation."""
    dist = recipe["distributed"]
    if dist["nnodes"] not in (1, alloc["nnodes"]):
        raise RecipeError(
            f"distributed.nnodes = {dist['nnodes']} but SLURM job {alloc['job_id']} has "
            f"{alloc['nnodes']} node(s). Fix: request {dist['nnodes']} nodes, or leave distributed.nnodes at 1"
        )
    dist["nnodes"] = alloc["nnodes"]
    if dist["master_addr"] is None and alloc["nnodes"] > 1:
        dist["master_addr"] = _first_host(alloc["nodelist"])


def _check(key: str, value: str, pattern: re.Pattern, fix: str) -> str:
    if not pattern.fullmatch(value):
        raise RecipeError(f"{key} = {value!r}: not allowed in an #SBATCH line (only {pattern.pattern}). Fix: {fix}")
    return value


def _extra_line(item: str) -> str:
    option = item.strip().removeprefix("#SBATCH").strip()
    if not option.startswith("-") or any(c in option for c in "$`\n\r\\"):
        raise RecipeError(
            f"slurm.extra: {item!r} is not a literal sbatch option (an option like --exclusive or "
            "--mem=0; sbatch expands no variables in #SBATCH lines). Fix: write the literal value"
        )
    return option


def slurm_from_distributed(dist: DistributedSection) -> dict:
    """The slurm section a recipe without one gets: distributed.nnodes nodes, distributed.nproc_per_node GPUs
    per node, the cluster's default partition and account. nproc_per_node auto is refused: it is decided on
    the node, so the GPUs to ask for are unknown here (a guess of 8 makes a CPU cluster reject the job)."""
    if not isinstance(dist["nproc_per_node"], int):
        raise RecipeError(
            "launch sbatch: distributed.nproc_per_node is auto and the recipe has no slurm section, so how many "
            "GPUs per node to ask SLURM for is unknown. Fix: slurm={gpus_per_node: N} (0 on a CPU-only cluster: "
            "no GPUs asked, CPU processes run), or distributed.nproc_per_node=N (N GPUs per node)"
        )
    defaults = {name: key.default for name, key in SLURM.fields.items()}
    return {**defaults, "nodes": dist["nnodes"], "gpus_per_node": dist["nproc_per_node"]}


def batch_script(recipe: Recipe, recipe_file: str, overrides: list[str], log_path: str, cwd: str) -> str:
    """The sbatch script for a recipe; without a slurm section, nodes and GPUs come from distributed."""
    dist = recipe["distributed"]
    if dist["hostfile"] is not None:
        raise RecipeError(
            "distributed.hostfile and launch sbatch both choose the nodes. Fix: drop distributed.hostfile "
            "(SLURM allocates the nodes)"
        )
    slurm = recipe["slurm"] or slurm_from_distributed(dist)
    if dist["nnodes"] not in (1, slurm["nodes"]):
        raise RecipeError(
            f"distributed.nnodes = {dist['nnodes']} but slurm.nodes = {slurm['nodes']}. "
            f"Fix: slurm.nodes={dist['nnodes']} (distributed.nnodes may stay 1: it follows the allocation)"
        )
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(recipe_file).stem) or "launch"
    options = [f"--job-name={name}", f"--nodes={slurm['nodes']}", "--ntasks-per-node=1"]
    if slurm["gpus_per_node"] > 0:
        options.append(f"--gpus-per-node={slurm['gpus_per_node']}")
    if slurm["cpus_per_task"] is not None:
        options.append(f"--cpus-per-task={slurm['cpus_per_task']}")
    for key, value in (("partition", slurm["partition"]), ("account", slurm["account"])):
        if value is not None:
            options.append(
                f"--{key}={_check(f'slurm.{key}', value, SAFE_WORD, f'use the {key} name sinfo/sacctmgr shows')}"
            )
    options.append(f"--time={_check('slurm.time', slurm['time'], TIME, 'write e.g. 24:00:00 or 2-00:00:00')}")
    options.append(f"--output={_check('job log', log_path, SAFE_PATH, 'pass --script PATH without spaces or quotes')}")
    options += [_extra_line(item) for item in slurm["extra"]]
    port = (
        dist["master_port"]
        if dist["master_port"] != "auto"
        else (DEFAULT_MASTER_PORT if slurm["nodes"] > 1 else "a free port")
    )
    launch = [sys.executable, "-m", "launcher.cli", "train", str(Path(recipe_file).resolve()), *overrides]
    master = ' "distributed.master_addr=${MASTER_ADDR}"' if dist["master_addr"] is None else ""
    lines = [
        "#!/bin/bash",
        "# written by `launch sbatch` (values validated; the command line below is shell-quoted)",
        *(f"#SBATCH {option}" for option in options),
        "set -eu",
        "# rendezvous: the job's first node, a fixed port (distributed.master_port)",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'echo "[launch] SLURM job $SLURM_JOB_ID: $SLURM_NNODES node(s), master $MASTER_ADDR:{port}"',
        f"cd {shlex.quote(cwd)}",
        "# one task per node; each `launch` takes its node rank from SLURM_NODEID and starts that node's torchrun agent",
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {shlex.join(launch)}{master}",
        "",
    ]
    return "\n".join(lines)


def submit(script: Path) -> str:
    """sbatch the script; returns the job id."""
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise RecipeError(f"sbatch is not on PATH. Fix: run on a SLURM login node, or submit {script} there") from None
    if done.returncode != 0:
        raise RecipeError(f"sbatch {script} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]
