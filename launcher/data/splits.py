"""Training and evaluation rows of a recipe, the one path every stage assembles its data by."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from launcher.data.cache import rows_of
from launcher.errors import DataError

Data = TypeVar("Data")  # a stage's data: a dataclass of its rows (first field) and counts (data/cache.py)


def split_validation(examples: list, val_size: float, seed: int) -> tuple[list, list]:
    """A seeded random share of the examples held out for evaluation: (train, eval)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(val_size * len(examples)))
    if held >= len(examples):
        raise DataError(f"data.val_size={val_size} leaves no training examples out of {len(examples)}")
    held_out = set(order[:held])
    return ([e for i, e in enumerate(examples) if i not in held_out], [examples[i] for i in sorted(held_out)])


def train_and_eval(
    recipe: Mapping[str, Any], build: Callable[[list[str]], Data], no_rows: Callable[[Data], str]
) -> tuple[Data, list[dict], list[dict]]:
    """(data.datasets' data, its training rows, the evaluation rows): build(dataset names) gives a stage's data;
    with no rows it is refused with the message no_rows(data); evaluation comes from data.eval_datasets, else from a seeded
    data.val_size share held out of the training rows; at most data.max_eval_samples of them."""
    data_cfg = recipe["data"]
    data = build(data_cfg["datasets"])
    rows, eval_rows = rows_of(data), []
    if not rows:
        raise DataError(no_rows(data))
    if data_cfg["eval_datasets"]:
        eval_rows = rows_of(build(data_cfg["eval_datasets"]))
    elif data_cfg["val_size"] > 0:
        rows, eval_rows = split_validation(rows, data_cfg["val_size"], recipe["train"]["seed"])
    return data, rows, eval_rows[: data_cfg["max_eval_samples"]]
