"""Find datasets by name in a LLaMA-Factory-compatible dataset_info.json, or by file path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class DataError(Exception):
    """Bad dataset registry, file or row; the message names the file and the fix."""


@dataclass
class DatasetSpec:
    name: str
    files: list[Path]
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)


ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
SUPPORTED_FORMATS = ("alpaca",)


def _registry(dataset_dir: Path) -> dict:
    info = dataset_dir / "dataset_info.json"
    if not info.is_file():
        return {}
    try:
        registry = json.loads(info.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{info}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not isinstance(registry, dict):
        raise DataError(f"{info}: expected a JSON object of dataset name -> entry")
    return registry


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """A registered dataset name, or a path to a .json/.jsonl file, as a DatasetSpec."""
    dataset_dir = Path(dataset_dir)
    registry = _registry(dataset_dir)
    if name in registry:
        entry = registry[name]
        formatting = entry.get("formatting", "alpaca")
        if formatting not in SUPPORTED_FORMATS:
            raise DataError(f"{dataset_dir / 'dataset_info.json'}: dataset {name!r} has formatting {formatting!r}, "
                            f"not available in this version yet (supported: {list(SUPPORTED_FORMATS)})")
        if "file_name" not in entry:
            raise DataError(f"{dataset_dir / 'dataset_info.json'}: dataset {name!r} has no file_name. "
                            "Fix: add \"file_name\": \"<file in dataset_dir>\"")
        path = dataset_dir / entry["file_name"]
        columns = {**ALPACA_COLUMNS, **entry.get("columns", {})}
    else:
        path = Path(name)
        formatting, columns = "alpaca", dict(ALPACA_COLUMNS)
        if not path.exists():
            known = ", ".join(sorted(registry)) or "none"
            raise DataError(f"data.datasets: {name!r} is neither a dataset in {dataset_dir / 'dataset_info.json'} "
                            f"(registered: {known}) nor an existing file. Fix: register it there or give a .json/.jsonl path")
    if not path.exists():
        raise DataError(f"dataset {name!r}: file {path} does not exist. Fix: correct file_name in dataset_info.json")
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    return DatasetSpec(name=name, files=files, formatting=formatting, columns=columns)


def read_rows(spec: DatasetSpec) -> list[dict]:
    """All rows of a dataset's files (.json array or .jsonl)."""
    rows: list[dict] = []
    for path in spec.files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{number}: invalid JSON line: {err.msg}") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON array of examples")
            rows.extend(data)
    return rows
