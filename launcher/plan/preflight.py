"""Refusals `launch plan` decides from the recipe, the model's files and the dataset files (torch-free),
so a run that every rank would refuse 10-100 s in is refused before any process starts.

The rules are the ones the worker applies (module_names.py for methods, data/rows.py for datasets),
called here on what can be read without loading the model: its config.json and safetensors headers,
and each dataset up to its first usable row. A hub id is looked up in the local hub cache (hub.py):
`launch plan` says whether it is there; `launch` (ensure_model) fetches it once, before the ranks start,
or refuses offline with the `launch download` command. docs/models.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.data.bad_rows import BadRows
from launcher.data.datasets import resolve_dataset
from launcher.data.formats import to_example, to_text
from launcher.data.rows import dataset_items
from launcher.data.templates import template_refusal
from launcher.errors import DataError, RecipeError
from launcher.model.builtin import is_builtin
from launcher.model.hub import download, download_command, hf_cached, hf_offline, missing_files, modelscope_missing
from launcher.model.module_names import parameter_shapes
from launcher.model.shape import model_shape
from launcher.recipe.optimizers import OWN_OPTIMIZERS, model_refusal
from launcher.registry import method_spec, stage_spec

if TYPE_CHECKING:
    from launcher.plan.types import ModelSource, Plan
    from launcher.recipe.types import Recipe


def _is_local(path: str) -> bool:
    """A filesystem path rather than a hub id (org/name, or a bare legacy name like gpt2)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).exists()


def check_model_path(recipe: Recipe) -> None:
    """A local model.path is a model folder (its config.json there)."""
    path = recipe["model"]["path"]
    if is_builtin(path) or not _is_local(path):
        return
    if not Path(path).is_dir():
        raise RecipeError(
            f"model.path = {path!r}: no such directory. Fix: point it at a model folder "
            "(config.json + weights), a hub id such as Qwen/Qwen2-0.5B, or builtin:tiny-qwen2"
        )
    if not (Path(path) / "config.json").is_file():
        raise RecipeError(
            f"model.path = {path!r}: no config.json there, so it is no model folder. Fix: point it at "
            "the folder that holds config.json and the weights (e.g. a `launch merge --out` folder)"
        )
    missing = missing_files(Path(path))
    if missing:
        raise RecipeError(
            f"model.path = {path!r} lacks {', '.join(missing)}, which every rank loads. Fix: copy them "
            "into that folder (a `launch merge --out` folder has all), or point model.path at a complete one"
        )


def model_source(recipe: Recipe) -> ModelSource:
    """Where the ranks will read model.path from, for the plan: {"path", "hub", "folder", "missing"}. A hub id's
    folder is its snapshot in the local cache (None: not there); missing lists what a cached snapshot lacks."""
    model = recipe["model"]
    source: ModelSource = {"path": model["path"], "hub": None, "folder": None, "missing": []}
    if is_builtin(model["path"]) or _is_local(model["path"]):
        return source
    source["hub"] = model["hub"]
    if model["hub"] == "huggingface":
        folder = hf_cached(model["path"])
        if folder is not None:
            source["folder"], source["missing"] = str(folder), missing_files(folder)
    return source


def format_model_source(source: ModelSource) -> str:
    """The plan's line about the model's files."""
    if source["hub"] is None:
        return f"model: {source['path']} ({'embedded' if is_builtin(source['path']) else 'local folder'})"
    command = download_command(source["path"], source["hub"])
    if source["folder"] and not source["missing"]:
        return f"model: {source['path']} in the local hub cache: {source['folder']}"
    state = (
        f"in the local hub cache at {source['folder']} without {', '.join(source['missing'])}"
        if source["folder"]
        else f"not in the local {source['hub']} cache"
    )
    return (
        f"model: {source['path']} {state}: `launch` fetches it once before the ranks start; offline "
        f"(HF_HUB_OFFLINE=1, no network) it refuses: run `{command}` first"
    )


def ensure_model(plan: Plan) -> None:
    """`launch`, before any process starts: a hub id the plan did not find complete in the cache is fetched now,
    by this one process (a progress bar per file), or refused offline with the `launch download` command.
    Then the ranks load it from the cache with HF_HUB_OFFLINE=1: none of them touches the network."""
    source = plan["model"]
    if source["hub"] is None:
        return
    path, command = source["path"], download_command(source["path"], source["hub"])
    if source["hub"] == "modelscope":
        refusal = modelscope_missing("model.hub")
        if refusal:
            raise RecipeError(refusal)
        plan["model_dir"] = str(
            download(path, "modelscope")
        )  # ModelScope's cache is no HF cache: the ranks read the folder
        return
    if not source["folder"] or source["missing"]:
        state = (
            f"lacks {', '.join(source['missing'])} in {source['folder']}"
            if source["folder"]
            else "is not in the local hub cache"
        )
        if hf_offline():
            raise RecipeError(
                f"model.path = {path!r} {state}, and HF_HUB_OFFLINE is set, so no rank could load it. "
                f"Fix: run `{command}` (where there is network), then launch again; or point model.path "
                "at a local model folder"
            )
        print(f"[launch] model.path = {path!r} {state}: fetching it once, before the ranks start", flush=True)
        folder = download(path)
        missing = missing_files(folder)
        if missing:
            raise RecipeError(
                f"model.path = {path!r}: the hub repo has no {', '.join(missing)} ({folder}), so no "
                "rank could load it. Fix: point model.path at a repo with a complete model"
            )
        source["folder"], source["missing"] = str(folder), []
    if not plan["nodes"][0].get("host"):  # a hostfile's other nodes read their own cache: they may still need the hub
        plan["env"]["HF_HUB_OFFLINE"] = "1"


def check_template(recipe: Recipe) -> None:
    """template: auto on a local model whose tokenizer has no chat template, refused before the ranks tokenize."""
    path = Path(recipe["model"]["path"])
    refusal = template_refusal(path if path.is_dir() else None, recipe["stage"], recipe["model"]["template"])
    if refusal:
        raise RecipeError(refusal)


def check_method_modules(recipe: Recipe) -> None:
    """The method's keys that name modules or layers (LoRA targets, freeze's layers and modules) fit the model,
    read from its weight headers or the builtin's config, as the worker would find once it had loaded it."""
    path, method = recipe["model"]["path"], recipe["method"]
    model_check = method_spec(method["name"]).model_check
    if model_check is None or not (is_builtin(path) or Path(path).is_dir()):
        return
    shapes = parameter_shapes(path)
    error = None if shapes is None else model_check(method, shapes, path)
    if error:
        raise RecipeError(error)


def check_optimizer_model(recipe: Recipe) -> None:
    """train.optimizer's needs of the model (recipe/optimizers.py model_refusal), before the ranks load it."""
    path = recipe["model"]["path"]
    if recipe["train"]["optimizer"] not in OWN_OPTIMIZERS:
        return
    local = is_builtin(path) or Path(path).is_dir()
    refusal = model_refusal(recipe["train"], model_shape(path)[0], parameter_shapes(path) if local else None)
    if refusal:
        raise RecipeError(refusal)


def check_datasets_yield_rows(recipe: Recipe) -> None:
    """Every dataset is of a kind the stage reads and not all bad, and data.datasets has a usable row: each
    read up to its first good row with the recipe's data.on_bad_row (error: a bad row before it is refused,
    as the run would refuse it)."""
    data, kinds = recipe["data"], stage_spec(recipe["stage"]).kinds
    convert = to_text if kinds is None else to_example  # a stage reading any kind reads the rows' text
    bad = BadRows(data["on_bad_row"])
    for key in ("datasets", "eval_datasets"):
        found = False
        for name in data[key]:
            try:
                found |= next(dataset_items(name, data, bad, convert, kinds), None) is not None
            except DataError as err:
                raise RecipeError(f"data.{key}: {err}") from None
        if key == "datasets" and not found:
            raise RecipeError(no_rows_error("data.datasets", data[key], data, "train on"))


def no_rows_error(key: str, names: list[str], data: Mapping[str, Any], purpose: str) -> str:
    """The refusal for datasets that hold no row: `launch train` for data.datasets, `launch eval` for its own."""
    files = [str(f) for name in names for f in resolve_dataset(name, data["dataset_dir"]).files]
    return (
        f"{key} = {names}: no rows in {', '.join(files)} (or in the split they select), nothing to {purpose}. "
        "Fix: fill the files, or name datasets that have rows"
    )


def check(recipe: Recipe) -> None:
    """Every preflight refusal, in the order a run would meet them."""
    check_model_path(recipe)
    check_template(recipe)
    check_method_modules(recipe)
    check_optimizer_model(recipe)
    check_datasets_yield_rows(recipe)
