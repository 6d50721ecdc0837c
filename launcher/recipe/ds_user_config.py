"""A user's own DeepSpeed JSON (`distributed.deepspeed_config`), as LLaMA-Factory and the HF Trainer take one.

Its ZeRO stage and offload become the recipe's distributed.zero / distributed.offload where the recipe does not
set them (recipe.py, at load); engines/deepspeed_config.py fills its "auto" values from the recipe exactly as it fills the bundled
ds_configs/ templates, except the scheduler's step counts, which only the Trainer knows (it fills them at run
time). An explicit JSON value that contradicts the recipe is refused naming both: the Trainer would refuse the
mismatch inside every rank. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from launcher.errors import RecipeError
from launcher.util.json_object import read_json_object

KEY = "distributed.deepspeed_config"
# "auto" values the HF Trainer fills once it knows the number of training steps (trainer_config_finalize)
RUNTIME_AUTO = ("scheduler.params.total_num_steps", "scheduler.params.warmup_num_steps")
# JSON fields that restate a recipe key: an explicit value there must agree with the recipe
RECIPE_FIELDS = {
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "train_batch_size": "train.micro_batch_size x train.grad_accum x world size",
    "gradient_clipping": "train.max_grad_norm",
    "bf16.enabled": "model.dtype",
    "fp16.enabled": "model.dtype",
    "optimizer.params.lr": "train.lr",
    "optimizer.params.weight_decay": "train.weight_decay",
    "scheduler.params.warmup_max_lr": "train.lr",
}


def read(path: str) -> dict:
    """The JSON object in path; an unreadable or invalid file is refused naming it (and the line)."""
    fix = (
        'point it at a DeepSpeed JSON object, e.g. {"zero_optimization": {"stage": 2}}, with no comments or '
        "trailing commas (relative paths start at the current folder)"
    )
    return read_json_object(path, RecipeError, fix, named_by=KEY)


STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu", "nvme")  # DeepSpeed's OffloadDeviceEnum


def _refuse(source: str, field: str, value, expected: str) -> RecipeError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    return RecipeError(f"{source}: {field} = {shown}: expected {expected}. Fix: write {expected} there")


def zero_and_offload(config: dict, source: str) -> tuple[int | str, str]:
    """A DeepSpeed config's ZeRO stage (0 without zero_optimization, as DeepSpeed; may be "auto") and the
    recipe's offload value for it: all (parameters and optimizer, ZeRO-3), optimizer, or none. Values
    DeepSpeed would refuse inside every rank are refused here naming `source` (the JSON's path)."""
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise _refuse(source, "zero_optimization", zero, 'a JSON object, e.g. {"stage": 2}')
    stage = zero.get("stage", 0)
    if stage != "auto" and (type(stage) is not int or stage not in STAGES):
        raise _refuse(source, "zero_optimization.stage", stage, 'one of 0, 1, 2, 3 or "auto"')

    def offloaded(part: str) -> bool:
        section = zero.get(part) or {}
        if not isinstance(section, dict):
            raise _refuse(source, f"zero_optimization.{part}", section, 'a JSON object, e.g. {"device": "cpu"}')
        device = section.get("device", "none")
        if device is not None and device not in OFFLOAD_DEVICES:
            raise _refuse(
                source, f"zero_optimization.{part}.device", device, " or ".join(map(json.dumps, OFFLOAD_DEVICES))
            )
        return device not in ("none", None)

    params, optimizer = offloaded("offload_param"), offloaded("offload_optimizer")
    if params and stage == 3:
        return stage, "all"
    return stage, "optimizer" if optimizer else "none"


def adopt_zero(resolved: dict, origins: dict[str, str], where) -> list[str]:
    """At recipe load: the JSON's stage and offload become distributed.zero / offload where the recipe left them
    at their defaults; set to something else they are refused. Returns the notes to print."""
    dist = resolved["distributed"]
    path = dist["deepspeed_config"]
    if path is None:
        return []
    if dist["engine"] != "deepspeed":
        raise RecipeError(
            f"{where('distributed.engine')}: distributed.engine = {dist['engine']!r} with {KEY} = "
            f"{path!r}: a DeepSpeed config needs the DeepSpeed engine. Fix: distributed.engine: deepspeed, "
            f"or drop {KEY}"
        )
    stage, offload = zero_and_offload(read(path), f"{path} ({KEY})")
    notes = []
    for key, theirs in (("distributed.zero", stage), ("distributed.offload", offload)):
        name, ours = key.split(".")[1], dist[key.split(".")[1]]
        if theirs == "auto" or ours == theirs:
            continue
        if key in origins:
            field = "zero_optimization.stage" if name == "zero" else "zero_optimization's offload sections"
            raise RecipeError(
                f"{where(key)}: {key} = {ours!r}, but {path} says {field}: {theirs!r}. Fix: drop "
                f"{key} from the recipe (the JSON decides), set it to {theirs!r}, or change the JSON"
            )
        dist[name] = theirs
        notes.append(f"{key}: {theirs} from {path}")
    return notes


def _walk(node, path: str = ""):
    """(dotted path, value) of every leaf of a JSON object."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else key)
    else:
        yield path, node


def user_template(path: str, values: dict) -> dict:
    """The user's JSON as engines/deepspeed_config.py's template: every explicit value that restates a recipe key must equal the
    recipe's (values: what engines/deepspeed_config.py fills "auto" with), and every "auto" must be one the recipe or the Trainer fills."""
    config = read(path)
    for field, value in _walk(config):
        if value == "auto":
            if field not in values and field not in RUNTIME_AUTO:
                raise RecipeError(
                    f'{path}: {field} is "auto", which neither the recipe nor the Trainer fills '
                    f"({KEY}). Fix: write a value there"
                )
        elif field in RECIPE_FIELDS and field in values and value != values[field]:
            raise RecipeError(
                f"{path}: {field} = {json.dumps(value)}, but the recipe's {RECIPE_FIELDS[field]} makes it "
                f"{json.dumps(values[field])} ({KEY}). Fix: set {RECIPE_FIELDS[field]} to match, or write "
                f'"auto" there in the JSON (filled from the recipe)'
            )
    return config


def runtime_autos(config: dict) -> list[str]:
    """The "auto" values left in a resolved config for the Trainer to fill at run time."""
    return [field for field, value in _walk(config) if value == "auto"]


def describe(plan: Mapping[str, Any]) -> str:  # a plan (plan/types.py Plan)
    """`launch plan`'s heading of the DeepSpeed config: which file, and what is left for the Trainer."""
    path = plan["recipe"]["distributed"]["deepspeed_config"]
    if path is None:
        return "# deepspeed config"
    left = runtime_autos(plan["deepspeed"])
    return f'# deepspeed config: {path}, "auto" filled from the recipe' + (
        f'; left "auto" for the Trainer (known once it counts the steps): {", ".join(left)}' if left else ""
    )
