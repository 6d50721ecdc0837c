"""A dataset's rows, converted one by one, with the rules every stage applies to them (torch-free).

The same generator feeds the worker's data pipeline (read to the end) and the planner's check
(stopped at the first good row), so a dataset the run would find empty or of the wrong kind is
refused by `launch plan` with the message the worker would print.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from itertools import chain, islice
from typing import Any

from launcher.data.bad_rows import BadRows
from launcher.data.datasets import DatasetSpec, resolve_dataset
from launcher.data.kinds import KIND_NEEDS
from launcher.data.readers import Row, iter_file
from launcher.errors import DataError

SAMPLE_SEED = 0  # num_samples draws the same rows on every run and rank


def require_kind(name: str, spec: DatasetSpec, kinds: tuple[str, ...] | None) -> None:
    """Refuse a dataset whose kind (sft, preference, kto) the stage does not read."""
    if kinds is not None and spec.kind not in kinds:
        raise DataError(
            f"dataset {name!r} is {KIND_NEEDS[spec.kind]}, but this stage needs "
            f"{' or '.join(KIND_NEEDS[k] for k in kinds)}. "
            "Fix: use another dataset or fix its entry in dataset_info.json"
        )


def _sample(rows: list[Row], count: int) -> list[Row]:
    """LLaMA-Factory's num_samples: `count` distinct rows when there are enough, else every row plus a random
    draw of the rest (repeats); seeded, kept in file order."""
    rng = random.Random(SAMPLE_SEED)
    whole, rest = divmod(count, len(rows)) if count > len(rows) else (0, count)
    picked = [i for _ in range(whole) for i in range(len(rows))] + rng.sample(range(len(rows)), rest)
    return [rows[i] for i in sorted(picked)]


def _rows(spec: DatasetSpec, data_cfg: Mapping[str, Any], bad: BadRows) -> Iterator[Row]:
    """The dataset's rows: its split slice, then num_samples (the registry's), then max_samples (the recipe's).
    Lazy where no slice or sample needs the row count."""
    rows: Iterator[Row] = chain.from_iterable(iter_file(path, bad) for path in spec.files)
    if spec.split != "train" or spec.num_samples is not None:
        listed = list(rows)
        listed = [listed[i] for i in spec.split_range(len(listed))]
        rows = iter(_sample(listed, spec.num_samples) if spec.num_samples is not None and listed else listed)
    return rows if data_cfg["max_samples"] is None else islice(rows, data_cfg["max_samples"])


def dataset_items(
    name: str,
    data_cfg: Mapping[str, Any],
    bad: BadRows,
    convert: Callable[[Row, DatasetSpec], object],
    kinds: tuple[str, ...] | None,
) -> Iterator:
    """convert(row, spec) of each usable row of one dataset; bad rows go to the policy. A dataset whose every
    row is bad is refused (once its rows are exhausted), naming the first; one with no rows yields nothing."""
    spec = resolve_dataset(name, data_cfg["dataset_dir"])
    require_kind(name, spec, kinds)
    skipped_before, good = len(bad.skipped), 0
    for row in _rows(spec, data_cfg, bad):
        try:
            item = convert(row, spec)
        except DataError as err:
            bad(err)
            continue
        good += 1
        yield item
    if good == 0 and len(bad.skipped) > skipped_before:
        raise DataError(
            f"dataset {name!r}: every row is bad ({len(bad.skipped) - skipped_before} skipped), first: "
            f"{bad.skipped[skipped_before]}. Fix: check its columns/tags in dataset_info.json"
        )
