"""`launch plan`'s human-readable view of a plan."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from launcher.kernels.choice import format_kernels
from launcher.plan.memory import format_memory
from launcher.plan.mesh import format_mesh
from launcher.plan.preflight import format_model_source
from launcher.recipe.ds_user_config import describe
from launcher.registry import engine_spec


def engine_label(plan: Plan) -> str:
    """How the ranks shard, in a few words: "ZeRO-3", "DDP", "FSDP2 + offload all"."""
    dist = plan["recipe"]["distributed"]
    return engine_spec(dist["engine"]).label(dist["zero"], dist["offload"])


def engine_section(plan: Plan) -> list[str]:
    """The engine's config as plan.json holds it."""
    dist = plan["recipe"]["distributed"]
    configs: Mapping[str, Any] = plan  # the engine names its own key
    key = engine_spec(dist["engine"]).config_key
    if configs.get(key) is None:
        return [f"# {dist['engine']}: {engine_label(plan)}, no engine config"]
    title = describe(plan) if key == "deepspeed" else f"# {key} ({engine_label(plan)}): TrainingArguments.{key}_config"
    return [title, json.dumps(configs[key], indent=2)]


if TYPE_CHECKING:
    from launcher.plan.types import Context, Plan


def format_context(context: Context, cutoff_len: int) -> str:
    rope, length = context["rope_scaling"], context["length"]
    if length is None:
        return f"context: the model's own (its config.json is not read before download); data.cutoff_len {cutoff_len}"
    if rope:
        how = (
            f" = {rope['rope_type']} RoPE factor {rope['factor']} x original {rope['original_max_position_embeddings']}"
        )
    else:
        how = " (max_position_embeddings)"
    return f"context: {length}{how}; data.cutoff_len {cutoff_len}"


def format_plan(plan: Plan) -> str:
    """Human-readable plan: recipe, world, DeepSpeed config, environment, command per node."""
    import yaml

    world, dist = plan["world"], plan["recipe"]["distributed"]
    lines = [
        "# recipe (resolved)",
        yaml.safe_dump(plan["recipe"], sort_keys=False).rstrip(),
        "",
        "# world",
        f"nodes: {world['nnodes']} x {world['nproc_per_node']} processes = world size {world['world_size']} "
        f"on {world['device']} ({world['backend']})" + (f": {', '.join(world['gpus'])}" if world["gpus"] else ""),
        f"rendezvous: {world['master_addr']}:{world['master_port']}",
        f"precision: {plan['dtype']}",
        format_mesh(plan["mesh"], engine_spec(dist["engine"]).shards_parameters(dist)),
        f"batch: micro {plan['batch']['micro_batch_size']} x grad_accum {plan['batch']['grad_accum']} "
        f"x data-parallel {plan['mesh']['data_parallel']} = global {plan['batch']['global_batch_size']}",
        f"output: {plan['output_dir']}",
        format_model_source(plan["model"]),
        format_context(plan["context"], plan["recipe"]["data"]["cutoff_len"]),
        "",
        *engine_section(plan),
    ]
    dist = plan["recipe"]["distributed"]
    lines += ["", "# kernels"] + format_kernels(plan["kernels"])
    if plan.get("stage"):
        lines += ["", f"# stage {plan['recipe']['stage']}"] + [f"{k}: {v}" for k, v in plan["stage"].items()]
    lines += [""] + format_memory(plan["memory"], (dist["zero"], dist["offload"]))
    if "auto" in plan["memory"]:
        lines.append("distributed.zero: auto chose the first option that fits, in the order listed")
    if plan["memory"].get("refusal"):
        lines.append(f"training refuses this plan: {plan['memory']['refusal']}")
    if plan.get("notes"):
        lines += ["", "# notes"] + plan["notes"]
    if plan.get("pending"):
        lines += ["", "# not there yet (training refuses until they are)"] + plan["pending"]
    lines += ["", "# environment"] + [f"{k}={shlex.quote(v)}" for k, v in plan["env"].items()]
    lines += ["", "# command per node"]
    for node in plan["nodes"]:
        host = (
            f" on {node['host']}" + (" (this machine, the others over ssh)" if node["node_rank"] == 0 else " (ssh)")
            if node.get("host")
            else ""
        )
        lines.append(f"node {node['node_rank']}{host}: {shlex.join(node['argv'])}")
    return "\n".join(lines)
