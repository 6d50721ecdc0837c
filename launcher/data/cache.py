"""Tokenized-data cache: tokenize once, reuse on every rank and every later run.

An entry is a folder named by a hash of everything the tokens depend on: the stage, each
dataset's registry entry and file contents, the tokenizer (its saved files), the template
and other settings, the data.* keys, and the source of launcher/data/. Inside it, every
column (input_ids, labels, ...) is two .npy arrays, the tokens end to end (int32) and the
example offsets (int64), and `manifest.json`, written last, lists each file's size and
sha256. An entry is only used when every file matches its manifest; otherwise (a crash
mid-write, a truncated copy, bit rot) it is rebuilt.

One process builds, the others wait: the builder holds an exclusive flock on
`<entry>.lock`, writes into a temporary folder and renames it into place whole. Any rank
of any node may take the lock, so a cache on a shared file system is built once for all
nodes and a node-local one once per node. The kernel drops the lock of a builder that
dies, and a waiter takes over; waiting ends with an error naming the entry and the lock
after `timeout_s` (the plan's distributed.timeout_minutes in a run).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from launcher.data.datasets import resolve_dataset
from launcher.data.defaults import WAIT_S
from launcher.errors import DataError
from launcher.util.timeouts import recipe_timeout_s

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger("launcher.data")
Data = TypeVar("Data", bound="DataclassInstance")  # a stage's data: a dataclass of its rows (first field) and counts
FORMAT = 1  # bump when the layout of an entry changes
MANIFEST = "manifest.json"
# data.* keys that do not change the tokens of a dataset (which datasets, and how the cache itself works)
NOT_IN_KEY = ("datasets", "eval_datasets", "val_size", "dataset_dir", "cache", "cache_dir", "num_workers")


@dataclass
class Tokenized:
    """What a stage caches: token columns (one list of ids per example, all columns the same length) and counts."""

    columns: dict[str, list[list[int]]]
    meta: dict = field(default_factory=dict)  # JSON-serialisable, e.g. dropped and skipped counts


def data_cache_dir() -> Path:
    """`$LAUNCHER_CACHE/data` if LAUNCHER_CACHE is set, else ~/.cache/llm-launcher/data."""
    from launcher.model.builtin import builtin_cache_dir

    return builtin_cache_dir().parent / "data"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_dir(folder: Path, pattern: str = "*") -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob(pattern)):
        if path.is_file():
            digest.update(f"{path.name}\0{_sha256_file(path)}\n".encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer as saved (vocabulary, merges, special tokens, chat template), path-independent."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return _sha256_dir(Path(folder))


def cache_key(stage: str, names: list[str], data_cfg: Mapping[str, Any], tokenizer, settings: dict) -> str:
    """The hash naming a cache entry; any change to what the tokens depend on changes it."""
    datasets = []
    for name in names:
        spec = resolve_dataset(name, data_cfg["dataset_dir"])
        entry = {**asdict(spec), "files": [[str(p.resolve()), _sha256_file(p)] for p in spec.files]}
        datasets.append(entry)
    parts = {
        "format": FORMAT,
        "stage": stage,
        "datasets": datasets,
        "data": {k: v for k, v in sorted(data_cfg.items()) if k not in NOT_IN_KEY},
        "settings": settings,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "code": _sha256_dir(Path(__file__).parent, "*.py"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---- one entry on disk -----------------------------------------------------------------------------------


def _write(folder: Path, data: Tokenized) -> None:
    """Arrays first, the manifest (with each file's size and sha256) last."""
    counts = {len(column) for column in data.columns.values()}
    if len(counts) > 1:
        raise ValueError(f"cache columns differ in length: { {k: len(v) for k, v in data.columns.items()} }")
    files = {}
    for name, column in data.columns.items():
        offsets = np.zeros(len(column) + 1, dtype=np.int64)
        np.cumsum([len(ids) for ids in column], out=offsets[1:])
        tokens = np.fromiter(chain.from_iterable(column), dtype=np.int32, count=int(offsets[-1]))
        for suffix, array in (("tokens", tokens), ("offsets", offsets)):
            path = folder / f"{name}.{suffix}.npy"
            np.save(path, array)
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
    manifest = {"format": FORMAT, "columns": list(data.columns), "meta": data.meta, "files": files}
    with (folder / MANIFEST).open("w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _read(folder: Path) -> tuple[Tokenized | None, str | None]:
    """(the entry, None), or (None, what is wrong) when it is partial or does not match its manifest, or
    (None, None) when there is none."""
    if not folder.exists():
        return None, None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        for name, expected in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != expected["size"] or _sha256_file(path) != expected["sha256"]:
                return None, f"{path} does not match its manifest (size or checksum)"
        columns = {}
        for name in manifest["columns"]:
            tokens = np.load(folder / f"{name}.tokens.npy").tolist()
            offsets = np.load(folder / f"{name}.offsets.npy").tolist()
            columns[name] = [tokens[a:b] for a, b in zip(offsets, offsets[1:])]
        return Tokenized(columns, manifest["meta"]), None
    except (OSError, ValueError, KeyError, TypeError) as err:  # no manifest (partial), unreadable JSON or array
        return None, f"{folder} is incomplete or unreadable ({type(err).__name__}: {err})"


def _publish(entry: Path, data: Tokenized) -> None:
    """Write into a temporary folder beside the entry, then rename it into place whole."""
    temporary = Path(tempfile.mkdtemp(prefix=f"{entry.name}.tmp-", dir=entry.parent))
    os.chmod(temporary, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users' runs
    try:
        _write(temporary, data)
        if entry.exists():  # a bad entry: readers never use it, so it can go
            shutil.rmtree(entry)
        os.rename(temporary, entry)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# ---- who builds ------------------------------------------------------------------------------------------


class _BuildLock:
    """An exclusive flock on `<entry>.lock`: the kernel releases it when its holder exits, even by a crash, so a
    dead builder never blocks the others. The file stays; it holds the current builder's host and pid."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as err:
            os.close(fd)
            raise DataError(
                f"data cache: cannot lock {self.path} ({err.strerror}): this file system has no file "
                "locks. Fix: set data.cache_dir to a local or lockable folder, or data.cache: false"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()}".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text() or "?"
        except OSError:
            return "?"


def _stamp(entry: Path) -> tuple | None:
    """Identity of the entry's manifest (None: no manifest), to verify each version of an entry only once."""
    try:
        stat = (entry / MANIFEST).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def load_or_build(entry: Path, build: Callable[[], Tokenized], timeout_s: float, poll_s: float = 0.2) -> Tokenized:
    """The cache entry at `entry`, built by `build()` in exactly one process if it is missing or bad.

    A complete entry is read without the lock, so ranks load it side by side."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = _BuildLock(entry.with_name(entry.name + ".lock"))
    deadline = time.monotonic() + timeout_s
    bad, announced = None, False
    while True:
        stamp = _stamp(entry)
        if stamp is not None and stamp != bad:
            found, _ = _read(entry)
            if found is not None:
                log.info("data cache: loaded %s", entry)
                return found
            bad = stamp  # being replaced, or to be rebuilt by whoever takes the lock
        if lock.acquire():
            try:
                found, problem = _read(entry)  # another process may have built it meanwhile
                if found is not None:
                    log.info("data cache: loaded %s", entry)
                    return found
                if problem:
                    log.warning("data cache: %s; rebuilding it", problem)
                started = time.perf_counter()
                data = build()
                _publish(entry, data)
                log.info("data cache: built %s in %.1f s", entry, time.perf_counter() - started)
                return data
            finally:
                lock.release()
        if time.monotonic() > deadline:
            raise DataError(
                f"data cache: waited {timeout_s:.0f} s for another process to build {entry} "
                f"(the builder holding {lock.path}: {lock.holder()}). Fix: check that process (is it "
                "stuck?), or set data.cache: false to tokenize in every process"
            )
        if not announced:
            log.info("data cache: waiting for %s (being built by %s)", entry, lock.holder())
            announced = True
        time.sleep(poll_s)


def rows_of(data) -> list[dict]:
    """The rows of a stage's data (SFTData, BlockData, PreferenceData, ...): by convention its first field."""
    return getattr(data, fields(data)[0].name)


def _same(row: dict) -> dict:
    return row


def cached_data(
    shape: type[Data],
    kind: str,
    names: list[str],
    data_cfg: Mapping[str, Any],
    tokenizer,
    settings: dict,
    build: Callable[[], Data],
    timeout_s: float = WAIT_S,
    store: Callable[[dict], dict] = _same,
    load: Callable[[dict], dict] = _same,
) -> Data:
    """The one cache wrapper of every stage's data: build()'s result through the cache (data.cache,
    data.cache_dir) under `kind`; `settings` holds what else the tokens depend on (template, stage options).

    build() returns a `shape` dataclass whose first field is the rows (every row a dict of the same
    token-id columns) and whose other fields are its counts; an entry holds store(row) per row (id
    lists only) and the counts, and load(stored row) gives each row back, equal and in order, whether
    built or loaded."""
    rows_field, *count_fields = [f.name for f in fields(shape)]

    def tokenized() -> Tokenized:
        data = build()
        rows = [store(row) for row in rows_of(data)]
        return Tokenized(
            {name: [row[name] for row in rows] for name in (rows[0] if rows else ())},
            {name: getattr(data, name) for name in count_fields},
        )

    if data_cfg.get("cache", True):
        root = Path(data_cfg.get("cache_dir") or data_cache_dir()).expanduser()
        key = cache_key(kind, names, data_cfg, tokenizer, settings)
        got = load_or_build(root / f"{kind}-{key[:32]}", tokenized, timeout_s)
    else:  # data.cache: false: every process builds its own
        got = tokenized()
    rows = [load(dict(zip(got.columns, ids))) for ids in zip(*got.columns.values())]
    return shape(**{rows_field: rows}, **got.meta)


def wait_s(recipe: Mapping[str, Any]) -> float:
    """How long a rank waits for another to build an entry: the run's distributed.timeout_minutes."""
    return recipe_timeout_s(recipe)


def templated_data(
    shape: type[Data],
    kind: str,
    build: Callable[..., Data],
    names: list[str],
    data_cfg: Mapping[str, Any],
    tokenizer,
    template: str,
    timeout_s: float = WAIT_S,
    **codec: Callable[[dict], dict],
) -> Data:
    """cached_data of build(names, data_cfg, tokenizer, template): the template is part of the entry's key;
    codec is cached_data's store/load."""
    return cached_data(
        shape,
        kind,
        names,
        data_cfg,
        tokenizer,
        {"template": template},
        lambda: build(names, data_cfg, tokenizer, template),
        timeout_s,
        **codec,
    )
