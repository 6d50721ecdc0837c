"""Refusals `launch plan` decides from the recipe, the model's files and the dataset files (torch-free),
so a run that every rank would refuse 10-100 s in is refused before any process starts.

The rules are the ones the worker applies (module_names.py for methods, data/rows.py for datasets),
called here on what can be read without loading the model: its config.json and safetensors headers,
and each dataset up to its first usable row. A hub model is only checked by the worker.
"""

from __future__ import annotations

import json
from pathlib import Path

from launcher.builtin import builtin_config_path, is_builtin
from launcher.data.bad_rows import BadRows
from launcher.data.formats import to_example, to_text
from launcher.data.registry import DataError, resolve_dataset
from launcher.data.rows import STAGE_KINDS, dataset_items
from launcher.data.templates import template_refusal
from launcher.module_names import freeze_error, layer_list, lora_targets_error, missing_modules_error, parameter_shapes
from launcher.recipe import RecipeError


def _is_local(path: str) -> bool:
    """A filesystem path rather than a hub id (org/name, or a bare legacy name like gpt2)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).exists()


def check_model_path(recipe: dict) -> None:
    """A local model.path is a model folder (its config.json there)."""
    path = recipe["model"]["path"]
    if is_builtin(path) or not _is_local(path):
        return
    if not Path(path).is_dir():
        raise RecipeError(f"model.path = {path!r}: no such directory. Fix: point it at a model folder "
                          "(config.json + weights), a hub id such as Qwen/Qwen2-0.5B, or builtin:tiny-qwen2")
    if not (Path(path) / "config.json").is_file():
        raise RecipeError(f"model.path = {path!r}: no config.json there, so it is no model folder. Fix: point it at "
                          "the folder that holds config.json and the weights (e.g. a `launch merge --out` folder)")


def check_template(recipe: dict) -> None:
    """template: auto on a local model whose tokenizer has no chat template, refused before the ranks tokenize."""
    path = Path(recipe["model"]["path"])
    refusal = template_refusal(path if path.is_dir() else None, recipe["stage"], recipe["model"]["template"])
    if refusal:
        raise RecipeError(refusal)


def _config(path: str) -> dict:
    return json.loads((builtin_config_path(path) if is_builtin(path) else Path(path) / "config.json").read_text())


def _layer_count(config: dict) -> int | None:
    text = config.get("text_config") or config  # multimodal configs nest the language model's
    return text.get("num_hidden_layers") or text.get("num_layers")


def check_method_modules(recipe: dict) -> None:
    """LoRA targets / modules to save and freeze's layers and modules exist in the model (read from its
    weight headers, or the builtin's config), as the worker would find once it had loaded the model."""
    path, method = recipe["model"]["path"], recipe["method"]
    if method["name"] not in ("lora", "freeze") or not (is_builtin(path) or Path(path).is_dir()):
        return
    shapes = parameter_shapes(path)
    if shapes is None:
        return
    names = list(shapes)
    error = None
    if method["name"] == "lora":
        if method["target"] != "all":
            error = lora_targets_error("method.target", method["target"], shapes)
        if error is None and method["additional_target"]:
            error = missing_modules_error("method.additional_target", method["additional_target"], names)
    else:
        count = _layer_count(_config(path))
        prefix = layer_list(names, count) if count else None
        if prefix is not None:
            error = freeze_error(method, prefix, count, names, path)
    if error:
        raise RecipeError(error)


def check_datasets_yield_rows(recipe: dict) -> None:
    """Every dataset is of a kind the stage reads and not all bad, and data.datasets has a usable row: each
    read up to its first good row with the recipe's data.on_bad_row (error: a bad row before it is refused,
    as the run would refuse it)."""
    data, stage = recipe["data"], recipe["stage"]
    convert = to_text if stage == "pt" else to_example
    bad = BadRows(data["on_bad_row"])
    for key in ("datasets", "eval_datasets"):
        found = False
        for name in data[key]:
            try:
                found |= next(dataset_items(name, data, bad, convert, STAGE_KINDS[stage]), None) is not None
            except DataError as err:
                raise RecipeError(f"data.{key}: {err}") from None
        if key == "datasets" and not found:
            files = [str(f) for name in data[key] for f in resolve_dataset(name, data["dataset_dir"]).files]
            raise RecipeError(f"data.datasets = {data[key]}: no rows in {', '.join(files)} (or in the split they "
                              "select), nothing to train on. Fix: fill the files, or name datasets that have rows")


def check(recipe: dict) -> None:
    """Every preflight refusal, in the order a run would meet them."""
    check_model_path(recipe)
    check_template(recipe)
    check_method_modules(recipe)
    check_datasets_yield_rows(recipe)
