"""Every file a run of a recipe reads, as the output rules need them: a run's output.dir and a command's
one-shot output file are never any of these (plan/output_dir.py, util/output_file.py). Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.data.datasets import dataset_source
from launcher.model.hub import model_folder
from launcher.recipe.schema import all_keys

FLAT = all_keys()


def _setting(recipe: Mapping[str, Any], dotted: str) -> Any:
    """A recipe's value, or the schema's default where the recipe (one as written, e.g. import-lf's) has none."""
    node: Any = recipe
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return FLAT[dotted].default if node is None else node


def run_inputs(recipe: Mapping[str, Any], recipe_file: str | Path | None = None) -> list[tuple[str, Path]]:
    """(what, path) of everything a run of `recipe` reads: the recipe file, the model, adapter and
    reward model, the user DeepSpeed JSON, the hostfile, data.dataset_dir's registry and the datasets.
    `recipe`: resolved (its datasets known to resolve), or as written (import-lf's)."""
    inputs = [("the recipe", Path(recipe_file))] if recipe_file is not None else []
    model = _setting(recipe, "model.path")
    if model is not None:
        inputs.append(("model.path", model_folder(str(model))))
    for key in ("model.adapter", "train.reward_model", "distributed.deepspeed_config", "distributed.hostfile"):
        if _setting(recipe, key) is not None:
            inputs.append((key, Path(str(_setting(recipe, key)))))
    dataset_dir = str(_setting(recipe, "data.dataset_dir"))
    registry = Path(dataset_dir) / "dataset_info.json"  # the folder itself may hold other things
    if registry.is_file():
        inputs.append(("data.dataset_dir's registry", registry))
    for key in ("data.datasets", "data.eval_datasets"):
        inputs += [(key, dataset_source(str(name), dataset_dir)) for name in _setting(recipe, key)]
    return inputs
