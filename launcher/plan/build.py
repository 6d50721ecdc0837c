"""The coordinator: a validated recipe -> the plan, a plain JSON dict, from the concerns of this package."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

from launcher.errors import RecipeError
from launcher.plan.argv import master_address, master_port, node_argv
from launcher.plan.context import context_plan
from launcher.plan.devices import detect_gpus, processes_per_node
from launcher.plan.env import check_env_forward, environment
from launcher.plan.files import PLAN_VERSION, node_plan_file
from launcher.plan.inputs import check_datasets, check_stage_inputs
from launcher.plan.memory import fit_refusal
from launcher.plan.memory_fit import memory_plan
from launcher.plan.output_dir import check_output_dir
from launcher.plan.precision import check_device, plan_kernels, resolve_dtype
from launcher.plan.preflight import check as check_preflight
from launcher.plan.preflight import model_source
from launcher.plan.trackers import check_trackers, tracker_env
from launcher.plan.types import EngineConfigs, Plan, World
from launcher.recipe.load import output_folder
from launcher.registry import engine_spec, method_spec, stage_spec

if TYPE_CHECKING:
    from launcher.plan.hostfile import Host
    from launcher.recipe.types import Recipe


def engine_config(recipe: Recipe, world_size: int, dtype: str, on_gpu: bool) -> EngineConfigs:
    """The plan's engine config under its engine's key; "deepspeed" is always there (None: DeepSpeed is off)."""
    engine = engine_spec(recipe["distributed"]["engine"])
    config = engine.config(recipe, world_size, dtype, on_gpu)
    if engine.config_key == "deepspeed":
        return {"deepspeed": config}
    return cast("EngineConfigs", {"deepspeed": None, engine.config_key: config})


def build_plan(
    recipe: Recipe,
    recipe_file: str | None = None,
    cwd: str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    allow_pending: bool = False,
) -> Plan:
    """Resolve a validated recipe into a plan (a plain JSON-serialisable dict).

    include / exclude: comma-separated hostfile hosts to keep or drop (`--include`, `--exclude`).
    allow_pending: earlier stages' outputs may be missing (listed in plan["pending"])."""
    dist = recipe["distributed"]
    check_datasets(recipe)
    check_preflight(recipe)  # model files, template, method modules, datasets' first rows: here, not on every rank
    output_dir = str(Path(cwd or os.getcwd(), output_folder(recipe)).resolve())
    check_output_dir(recipe, output_dir)  # apart from the inputs, creatable: plan refuses as train does
    check_env_forward(dist)
    check_trackers(recipe["output"]["report_to"])
    pending = check_stage_inputs(recipe, allow_pending)
    gpus = detect_gpus()
    on_gpu = gpus["count"] > 0
    check_device(recipe, gpus)
    dtype = resolve_dtype(recipe["model"]["dtype"], gpus)
    nproc = processes_per_node(dist["nproc_per_node"], gpus)
    hosts: list[Host] = []  # none without a hostfile
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
    world: World = {
        "nnodes": nnodes,
        "nproc_per_node": nproc,
        "world_size": nnodes * nproc,
        "device": "cuda" if on_gpu else "cpu",
        "backend": "nccl" if on_gpu else "gloo",
        "gpus": gpus["names"],
        "master_addr": master_address(dist["master_addr"], hosts, nnodes),
        "master_port": master_port(dist["master_port"], nnodes),
    }
    recipe, memory, plan_mesh = memory_plan(recipe, world, gpus, dtype)
    kernels = plan_kernels(recipe, on_gpu)  # after sequence_parallel: auto is resolved (the loss kernel follows it)
    # training refuses a plan that does not fit; `launch plan` prints why and exits 0 (a plan
    # made on another machine than the cluster's)
    memory["refusal"] = fit_refusal(memory, recipe)
    plan_file = str(Path(output_dir) / "plan.json")
    train = recipe["train"]
    stage_plan = stage_spec(recipe["stage"]).plan
    return {
        "version": PLAN_VERSION,
        "recipe_file": recipe_file,
        "pending": pending,
        "notes": method_spec(recipe["method"]["name"]).notes(recipe),
        "recipe": copy.deepcopy(recipe),
        "model": model_source(recipe),
        "world": world,
        "dtype": dtype,
        "batch": {
            "micro_batch_size": train["micro_batch_size"],
            "grad_accum": train["grad_accum"],
            # a sequence-parallel group trains one share of the batch together
            "global_batch_size": train["micro_batch_size"] * train["grad_accum"] * plan_mesh["data_parallel"],
        },
        "mesh": plan_mesh,
        **engine_config(recipe, world["world_size"], dtype, on_gpu),
        "memory": memory,
        "kernels": kernels,
        "context": context_plan(recipe),
        "stage": stage_plan(recipe, world, cwd or os.getcwd()) if stage_plan else {},
        "env": {**environment(recipe, nproc, on_gpu), **tracker_env(recipe["output"]["report_to"], output_dir)},
        "output_dir": output_dir,
        "plan_file": plan_file,
        "nodes": [
            {
                "node_rank": k,
                "host": hosts[k].name if hosts else None,
                "plan_file": node_plan_file(output_dir, k),
                "argv": node_argv(recipe, world, k, node_plan_file(output_dir, k)),
            }
            for k in range(nnodes)
        ],
    }
