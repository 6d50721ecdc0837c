"""Find datasets by name in a LLaMA-Factory-compatible dataset_info.json, or by file path.

Torch-free and light: the planner calls resolve_dataset to refuse a missing dataset before
any process starts. Reading the files is readers.py's job.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path


class DataError(Exception):
    """Bad dataset registry, file or row; the message names the file and the fix."""


FORMATS = ("alpaca", "sharegpt", "openai")
FILE_TYPES = (".json", ".jsonl", ".csv", ".parquet")

# LLaMA-Factory's column names and their defaults per format (None: the column is optional and unset).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
COLUMN_DEFAULTS = {
    "alpaca": {**ALPACA_COLUMNS, "tools": "tools"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
}
COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools",
               "chosen", "rejected", "kto_tag", "text")
TAG_DEFAULTS = {
    "sharegpt": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"},
    "openai": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"},
}
ENTRY_KEYS = ("file_name", "formatting", "ranking", "columns", "tags")
# Entry keys of LLaMA-Factory that fetch from a hub or run scripts: refused, this launcher reads local files only.
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# Entry keys LLaMA-Factory uses that do not change what is read here.
INERT_KEYS = ("file_sha1",)
LISTED = 10  # registered names shown when a name is unknown (LLaMA-Factory's registry has hundreds)


@dataclass
class DatasetSpec:
    name: str
    files: list[Path]
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False

    @property
    def kind(self) -> str:
        """sft | preference | kto: what a row of this dataset holds."""
        if self.ranking:
            return "preference"
        return "kto" if "kto_tag" in self.columns else "sft"


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


def _mapping(value: object, allowed: tuple[str, ...], where: str, what: str) -> dict[str, str]:
    """A columns/tags mapping: known keys only, string values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{where}: {what} must be an object, got {value!r}")
    for key, item in value.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {list(allowed)}"
            raise DataError(f"{where}: unknown {what} key {key!r}. Fix: {hint}")
        if not isinstance(item, str) or not item:
            raise DataError(f"{where}: {what}.{key} must be a column/tag name (a non-empty string), got {item!r}")
    return dict(value)


def _entry_spec(name: str, entry: object, dataset_dir: Path) -> tuple[Path, str, dict, dict, bool]:
    """Validate one registry entry: (path, formatting, columns, tags, ranking)."""
    where = f"{dataset_dir / 'dataset_info.json'}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name, formatting, columns, ...")
    remote = [key for key in REMOTE_KEYS if key in entry]
    if remote:
        raise DataError(f"{where}: {remote[0]} (hub or script datasets) cannot be read here. "
                        "Fix: download the files into dataset_dir and set \"file_name\"")
    for key in entry:
        if key not in ENTRY_KEYS + INERT_KEYS:
            close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use only {list(ENTRY_KEYS)}"
            raise DataError(f"{where}: unknown key {key!r}. Fix: {hint}")
    if "file_name" not in entry:
        raise DataError(f"{where}: no file_name. Fix: add \"file_name\": \"<file or folder in {dataset_dir}>\"")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {list(FORMATS)}")
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise DataError(f"{where}: ranking must be true or false, got {ranking!r}")
    columns = _mapping(entry.get("columns"), COLUMN_KEYS, where, "columns")
    tags = _mapping(entry.get("tags"), tuple(TAG_DEFAULTS["sharegpt"]), where, "tags")
    if tags and formatting == "alpaca":
        raise DataError(f"{where}: tags apply to sharegpt/openai messages, not to formatting alpaca. "
                        "Fix: set \"formatting\": \"sharegpt\" or remove tags")
    if ranking and "kto_tag" in columns:
        raise DataError(f"{where}: a dataset is either a preference set (ranking: true) or a KTO set (kto_tag), not both")
    if ranking:
        columns = {"chosen": "chosen", "rejected": "rejected", **columns}
    return dataset_dir / entry["file_name"], formatting, columns, tags, ranking


def _data_files(path: Path, name: str) -> list[Path]:
    """The data files of a path: itself, or the supported files of a folder (hidden files aside)."""
    if path.is_file():
        if path.suffix not in FILE_TYPES:
            raise DataError(f"dataset {name!r}: {path} has file type {path.suffix or '(none)'!r}; "
                            f"supported: {', '.join(FILE_TYPES)}. Fix: convert it or rename it to its real type")
        return [path]
    files = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    others = [p.name for p in files if p.suffix not in FILE_TYPES or not p.is_file()]
    if others:
        raise DataError(f"dataset {name!r}: folder {path} holds {others[0]!r}, not a {'/'.join(FILE_TYPES)} file. "
                        "Fix: keep only data files in a dataset folder")
    if not files:
        raise DataError(f"dataset {name!r}: folder {path} has no data files ({', '.join(FILE_TYPES)})")
    return files


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """A registered dataset name, or a path to a data file or folder (alpaca columns), as a DatasetSpec."""
    dataset_dir = Path(dataset_dir)
    registry = _registry(dataset_dir)
    if name in registry:
        path, formatting, columns, tags, ranking = _entry_spec(name, registry[name], dataset_dir)
    else:
        path, formatting, columns, tags, ranking = Path(name), "alpaca", {}, {}, False
        if not path.exists():
            close = difflib.get_close_matches(name, list(registry), n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            known = ", ".join(list(registry)[:LISTED]) + (f", ... ({len(registry)} in all)" if len(registry) > LISTED else "")
            raise DataError(f"{name!r} is neither a dataset in {dataset_dir / 'dataset_info.json'} "
                            f"(registered: {known or 'none'}) nor an existing file. "
                            f"{hint}Fix: register it there or give a file/folder path")
    if not path.exists():
        raise DataError(f"dataset {name!r}: file {path} does not exist. Fix: correct file_name in dataset_info.json")
    return DatasetSpec(name=name, files=_data_files(path, name), formatting=formatting,
                       columns={**COLUMN_DEFAULTS[formatting], **columns},
                       tags={**TAG_DEFAULTS.get(formatting, {}), **tags}, ranking=ranking)
