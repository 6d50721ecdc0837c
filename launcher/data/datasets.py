"""Find datasets by name in a LLaMA-Factory-compatible dataset_info.json, or by file path.

Torch-free and light: the planner calls resolve_dataset to refuse a missing dataset before
any process starts. Reading the files is readers.py's job.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import DataError

FORMATS = ("alpaca", "sharegpt", "openai")
FILE_TYPES = (".json", ".jsonl", ".csv", ".parquet", ".txt")

# LLaMA-Factory's column names and their defaults per format (None: the column is optional and unset).
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}
COLUMN_DEFAULTS = {
    "alpaca": {**ALPACA_COLUMNS, "tools": "tools"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
}
COLUMN_KEYS = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "chosen",
    "rejected",
    "kto_tag",
    "text",
)
TAG_DEFAULTS = {
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}
ENTRY_KEYS = ("file_name", "formatting", "ranking", "columns", "tags", "split", "num_samples", "folder", "subset")
# Entry keys of LLaMA-Factory that fetch from a hub, a cloud bucket or a script: refused (no network here), each
# with the way to get the same data as local files.
REMOTE_KEYS = {
    "hf_hub_url": "download it: `huggingface-cli download --repo-type dataset {value} --local-dir {local}`",
    "ms_hub_url": "download it: `modelscope download --dataset {value} --local_dir {local}`",
    "om_hub_url": "download it from the Modelers hub into {local}",
    "script_url": "run the loading script once (datasets.load_dataset) and save its rows as .jsonl/.parquet in {local}",
    "cloud_file_name": "copy the file from the bucket into {local}",
    "revision": "download that revision of the hub dataset into {local}",
}
# LLaMA-Factory's multimodal columns: this launcher trains text only.
MEDIA_COLUMNS = ("images", "videos", "audios")
# Entry keys LLaMA-Factory uses that do not change what is read here.
INERT_KEYS = ("file_sha1",)
LISTED = 10  # registered names shown when a name is unknown (LLaMA-Factory's registry has hundreds)
# `split` of a local dataset, optionally sliced as `datasets` slices it ("train[:1000]", "train[10%:]"). A plain
# file is the split "train" (LLaMA-Factory loads it so too); in a folder (a hub dataset's local copy) a split
# name selects the files named for it, as the hub names them ("train_sft-00000-of-00001.parquet", "test.jsonl").
SPLIT = re.compile(r"(?P<name>[A-Za-z0-9_]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")
SPLIT_OF_FILE = re.compile(r"[A-Za-z0-9_]+")
# file names that say which split they hold (datasets' split keywords), as in train_sft-00000-of-00001.parquet
SPLIT_WORD = re.compile(r"(train|training|test|testing|eval|evaluation|validation|valid|val|dev)(_|$)")
# JSON a hub copy carries beside its data (datasets' metadata, save_to_disk's state): not rows
HUB_METADATA = ("dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json")


@dataclass
class DatasetSpec:
    name: str
    files: list[Path]
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False
    split: str = "train"  # a split name or a slice of it, e.g. "train[:1000]", "train_sft[10%:20%]"
    num_samples: int | None = None  # a seeded sample of this many rows (repeating rows when more than there are)

    def split_range(self, count: int) -> range:
        """The row indices `split` selects out of `count` rows, as `datasets` computes them (percent: closest)."""
        match = split_parts(self.split)

        def bound(text: str | None, default: int) -> int:
            if text is None:
                return default
            if text.endswith("%"):
                return int(round(int(text[:-1]) * count / 100.0))
            return int(text)

        return range(count)[slice(bound(match["start"], 0), bound(match["stop"], count))]

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


def _local_path(name: str, entry: dict, dataset_dir: Path, where: str) -> Path:
    """file_name, then LLaMA-Factory's `folder` (a hub dataset's data_dir) and `subset` (a configuration), which
    in a local copy of a hub dataset are subfolders."""
    path = dataset_dir / entry["file_name"]
    for key in ("folder", "subset"):
        if key not in entry:
            continue
        value = entry[key]
        if not path.is_dir():
            raise DataError(
                f"{where}: {key} selects a subfolder, so file_name must be a folder (a local copy of the "
                f"hub dataset); {path} is not one. Fix: point file_name at that folder, or remove {key}"
            )
        if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
            raise DataError(f"{where}: {key} must be a subfolder name inside file_name, got {value!r}")
        if not (path / value).is_dir():
            raise DataError(
                f"{where}: {key} {value!r} selects the subfolder {path / value}, which is not a folder. "
                f"Fix: put that {'configuration' if key == 'subset' else 'part'} of the dataset there, "
                f"or point file_name at its files and remove {key}"
            )
        path = path / value
    return path


def _remote_refusal(name: str, entry: dict, dataset_dir: Path, where: str) -> None:
    """Hub, cloud and script entries: a clear refusal with the way to the same data as local files."""
    remote = [key for key in REMOTE_KEYS if key in entry]
    if not remote:
        return
    key = remote[0]
    local = dataset_dir / name
    fix = REMOTE_KEYS[key].format(value=entry[key], local=local)
    raise DataError(
        f"{where}: {key} ({entry[key]!r}) needs the network or a loading script, and this launcher reads "
        f'local files only. Fix: {fix}, then replace {key} with "file_name": "{name}"'
    )


def split_parts(split: str) -> re.Match[str]:
    """A split _split_and_samples accepted, as its name, start and stop."""
    match = SPLIT.fullmatch(split)
    assert match is not None, f"split {split!r} passed _split_and_samples"
    return match


def _split_of_file(file_name: str) -> str:
    """The split a file is named for: its leading word ("" for a name that starts with none)."""
    match = SPLIT_OF_FILE.match(file_name)
    return match[0] if match else ""


def _split_and_samples(entry: dict, where: str) -> tuple[str, int | None]:
    split, num_samples = entry.get("split", "train"), entry.get("num_samples")
    if not isinstance(split, str) or not SPLIT.fullmatch(split):
        raise DataError(
            f"{where}: split {split!r} is not a split name, optionally sliced as in datasets "
            '("train", "train_sft", "train[:1000]", "train[10%:20%]"). Fix: use such a split'
        )
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise DataError(
            f"{where}: num_samples must be a positive integer, got {num_samples!r}. "
            "Fix: set the number of rows to draw, or remove num_samples to use every row"
        )
    return split, num_samples


def _entry_spec(name: str, entry: object, dataset_dir: Path) -> DatasetSpec:
    """Validate one registry entry into a DatasetSpec (files not yet listed)."""
    where = f"{dataset_dir / 'dataset_info.json'}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name, formatting, columns, ...")
    _remote_refusal(name, entry, dataset_dir, where)
    for key in entry:
        if key not in ENTRY_KEYS + INERT_KEYS:
            close = difflib.get_close_matches(key, ENTRY_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use only {list(ENTRY_KEYS)}"
            raise DataError(f"{where}: unknown key {key!r}. Fix: {hint}")
    if "file_name" not in entry:
        raise DataError(f'{where}: no file_name. Fix: add "file_name": "<file or folder in {dataset_dir}>"')
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {list(FORMATS)}")
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise DataError(f"{where}: ranking must be true or false, got {ranking!r}")
    media = [key for key in MEDIA_COLUMNS if key in (entry.get("columns") or {})]
    if media:
        raise DataError(
            f"{where}: columns.{media[0]}: multimodal data is not supported (this launcher trains on text). "
            f"Fix: remove columns.{media[0]}, or use a text-only copy of the dataset"
        )
    columns = _mapping(entry.get("columns"), COLUMN_KEYS, where, "columns")
    tags = _mapping(entry.get("tags"), tuple(TAG_DEFAULTS["sharegpt"]), where, "tags")
    if tags and formatting == "alpaca":
        raise DataError(
            f"{where}: tags apply to sharegpt/openai messages, not to formatting alpaca. "
            'Fix: set "formatting": "sharegpt" or remove tags'
        )
    if ranking and "kto_tag" in columns:
        raise DataError(
            f"{where}: a dataset is either a preference set (ranking: true) or a KTO set (kto_tag), not both"
        )
    if ranking:
        columns = {"chosen": "chosen", "rejected": "rejected", **columns}
    split, num_samples = _split_and_samples(entry, where)
    path = _local_path(name, entry, dataset_dir, where)
    if split_parts(split)["name"] != "train" and path.is_file():
        raise DataError(
            f'{where}: split {split!r}: {path} is one file, which is the split "train". Fix: point '
            "file_name at the folder holding the split's files (a hub dataset's local copy), or put the "
            "rows of that split in their own file and register it as its own dataset"
        )
    return DatasetSpec(name, [path], formatting, columns, tags, ranking, split, num_samples)


def _data_files(path: Path, name: str, split: str = "train") -> list[Path]:
    """The data files of a path: itself, or the supported files anywhere in a folder (hidden ones aside; a hub
    copy's README.md, scripts and licences are not rows), those named for the split when any are."""
    if path.is_file():
        if path.suffix not in FILE_TYPES:
            raise DataError(
                f"dataset {name!r}: {path} has file type {path.suffix or '(none)'!r}; "
                f"supported: {', '.join(FILE_TYPES)}. Fix: convert it or rename it to its real type"
            )
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix in FILE_TYPES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"dataset {name!r}: folder {path} has no data files ({', '.join(FILE_TYPES)})")
    files = [p for p in files if p.name not in HUB_METADATA]
    wanted = split_parts(split)["name"]
    named = [p for p in files if _split_of_file(p.name) == wanted]
    if named:
        return named
    found = sorted({_split_of_file(p.name) for p in files})
    # no file is named for a split: the folder is the one split "train" (but never train_sft + test_sft together)
    if wanted == "train" and not any(SPLIT_WORD.match(name) for name in found):
        return files
    raise DataError(
        f"dataset {name!r}: folder {path} has no files of split {wanted!r} (file names start with "
        f"{', '.join(found)}). Fix: set split to one of those in dataset_info.json"
    )


def dataset_source(name: str, dataset_dir: str | Path) -> Path:
    """The file or folder a dataset name reads: its registry entry's file_name (and folder/subset), else the path itself."""
    dataset_dir = Path(dataset_dir)
    registry = _registry(dataset_dir)
    return _entry_spec(name, registry[name], dataset_dir).files[0] if name in registry else Path(name)


def _sniffed_format(files: list[Path]) -> tuple[str, dict[str, str]]:
    """(formatting, columns) of an unregistered data file from its first row: a `conversations` list is
    sharegpt (role/content messages inside it: openai's tags), a `messages` list openai, anything else alpaca."""
    from launcher.data.readers import iter_file

    first = next(iter_file(files[0], lambda error: None), None) if files else None
    row = first.data if first is not None else {}
    for column, formatting in (("conversations", "sharegpt"), ("messages", "openai")):
        messages = row.get(column)
        if isinstance(messages, list):
            openai_tags = bool(messages) and isinstance(messages[0], dict) and "role" in messages[0]
            return ("openai" if openai_tags else formatting), {"messages": column}
    return "alpaca", {}


def resolve_dataset(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """A registered dataset name, or a path to a data file or folder (its format read off its first row), as a
    DatasetSpec."""
    dataset_dir = Path(dataset_dir)
    registry = _registry(dataset_dir)
    if name in registry:
        spec = _entry_spec(name, registry[name], dataset_dir)
    else:
        spec = DatasetSpec(name, [Path(name)])
        if not Path(name).exists():
            close = difflib.get_close_matches(name, list(registry), n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            known = ", ".join(list(registry)[:LISTED]) + (
                f", ... ({len(registry)} in all)" if len(registry) > LISTED else ""
            )
            raise DataError(
                f"{name!r} is neither a dataset in {dataset_dir / 'dataset_info.json'} "
                f"(registered: {known or 'none'}) nor an existing file. "
                f"{hint}Fix: register it there or give a file/folder path"
            )
    path = spec.files[0]
    if not path.exists():
        raise DataError(f"dataset {name!r}: file {path} does not exist. Fix: correct file_name in dataset_info.json")
    spec.files = _data_files(path, name, spec.split)
    if name not in registry:
        spec.formatting, spec.columns = _sniffed_format(spec.files)
    spec.columns = {**COLUMN_DEFAULTS[spec.formatting], **spec.columns}
    spec.tags = {**TAG_DEFAULTS.get(spec.formatting, {}), **spec.tags}
    return spec
