"""The coordinator: a validated recipe -> the plan, a plain JSON dict, from the concerns of this package."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from launcher.errors import RecipeError
from launcher.plan.argv import _node_argv, master_port
from launcher.plan.deepspeed import deepspeed_config
from launcher.plan.devices import CPU_PROCESSES, _check_nproc, detect_gpus
from launcher.plan.env import _environment
from launcher.plan.files import PLAN_VERSION, node_plan_file
from launcher.plan.inputs import _check_datasets, _check_stage_inputs
from launcher.plan.memory import fit_refusal
from launcher.plan.memory_fit import _memory_plan
from launcher.plan.precision import _check_device, _kernel_plan, resolve_dtype
from launcher.plan.preflight import check as check_preflight
from launcher.plan.preflight import model_source


def build_plan(
    recipe: dict,
    recipe_file: str | None = None,
    cwd: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    allow_pending: bool = False,
) -> dict:
    """Resolve a validated recipe into a plan (a plain JSON-serialisable dict).

    include / exclude: comma-separated hostfile hosts to keep or drop (`--include`, `--exclude`).
    allow_pending: earlier stages' outputs may be missing (listed in plan["pending"])."""
    dist = recipe["distributed"]
    _check_datasets(recipe)
    check_preflight(recipe)  # model files, template, method modules, datasets' first rows: here, not on every rank
    pending = _check_stage_inputs(recipe, allow_pending)
    gpus = detect_gpus()
    on_gpu = gpus["count"] > 0
    _check_device(recipe, gpus)
    kernels = _kernel_plan(recipe, on_gpu)
    dtype = resolve_dtype(recipe["model"]["dtype"], gpus)
    if dist["nproc_per_node"] == "auto":
        nproc = gpus["count"] if on_gpu else CPU_PROCESSES
    else:
        nproc = dist["nproc_per_node"]
        _check_nproc(nproc, gpus)
    hosts = None
    if dist["hostfile"] is not None:
        from launcher.plan.hostfile import hostfile_hosts

        hosts = hostfile_hosts(dist, Path(cwd or os.getcwd(), dist["hostfile"]), include, exclude)
        nproc = hosts[0].slots
    elif include or exclude:
        raise RecipeError(
            "--include/--exclude select hostfile hosts, but distributed.hostfile is not set. "
            "Fix: set distributed.hostfile, or drop the option"
        )
    nnodes = dist["nnodes"] if dist["nnodes"] is not None else len(hosts)  # None: the hostfile's hosts
    recipe = {**recipe, "distributed": {**dist, "nnodes": nnodes}}
    master_addr = dist["master_addr"] or (hosts[0].name if hosts else None)
    if nnodes > 1 and master_addr is None:
        raise RecipeError(
            f"distributed.nnodes = {nnodes} needs distributed.master_addr (the address of node 0), "
            "a distributed.hostfile, or a SLURM allocation. Fix: set distributed.master_addr: <node-0 address>"
        )
    world = {
        "nnodes": nnodes,
        "nproc_per_node": nproc,
        "world_size": nnodes * nproc,
        "device": "cuda" if on_gpu else "cpu",
        "backend": "nccl" if on_gpu else "gloo",
        "gpus": gpus["names"],
        "master_addr": master_addr or "127.0.0.1",
        "master_port": master_port(dist["master_port"], nnodes),
    }
    recipe, memory = _memory_plan(recipe, world, gpus, dtype)
    # training refuses a plan that does not fit; `launch plan` prints why and exits 0 (a plan
    # made on another machine than the cluster's)
    memory["refusal"] = fit_refusal(memory, recipe)
    output_dir = str(Path(cwd or os.getcwd(), recipe["output"]["dir"]).resolve())
    plan_file = str(Path(output_dir) / "plan.json")
    train = recipe["train"]
    return {
        "version": PLAN_VERSION,
        "recipe_file": recipe_file,
        "pending": pending,
        "recipe": copy.deepcopy(recipe),
        "model": model_source(recipe),
        "world": world,
        "dtype": dtype,
        "batch": {
            "micro_batch_size": train["micro_batch_size"],
            "grad_accum": train["grad_accum"],
            "global_batch_size": train["micro_batch_size"] * train["grad_accum"] * world["world_size"],
        },
        "deepspeed": deepspeed_config(recipe, world["world_size"], dtype, on_gpu),
        "memory": memory,
        "kernels": kernels,
        "env": _environment(recipe, nproc, on_gpu),
        "output_dir": output_dir,
        "plan_file": plan_file,
        "nodes": [
            {
                "node_rank": k,
                "host": hosts[k].name if hosts else None,
                "plan_file": node_plan_file(output_dir, k),
                "argv": _node_argv(recipe, world, k, node_plan_file(output_dir, k)),
            }
            for k in range(nnodes)
        ],
    }
