"""Folders that appear whole or not at all: a folder is written under a staging name beside its
final place (same filesystem), fsynced, then renamed. Used for training checkpoints (atomic.py)
and for the outputs of `launch consolidate` and `launch merge`."""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from launcher.errors import CheckpointError

PARTIAL = ".partial-"  # <out>.partial-<pid>: an output being written by process <pid>


def _fsync_tree(folder: Path) -> None:
    """Flush every file, then every folder entry, of `folder` to disk."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, final: Path) -> None:
    """fsync `staged`, then make it visible as `final` with a rename (replacing an older `final`)."""
    _fsync_tree(staged)
    if final.exists():  # a resumed run saving the same step again (or an empty --out): swap, then drop the old one
        old = staged.with_name(staged.name + ".replaced")
        final.rename(old)
        staged.rename(final)
        shutil.rmtree(old)
    else:
        staged.rename(final)
    _fsync(final.parent)


def require_empty_dir(out: Path) -> None:
    """Refuse to write a consolidated or merged artefact over existing files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} already holds files. Fix: choose an empty or new folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Staging folders of `out` left by killed runs (their process is gone)."""
    for path in out.parent.glob(f"{glob.escape(out.name)}{PARTIAL}*"):
        pid = path.name.rpartition(PARTIAL)[2]
        if pid.isdigit() and not _alive(int(pid)):
            print(f"[launch] removing {path}, left by an interrupted run", flush=True)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """A staging folder to write `out` into; renamed to `out` only if the block finishes, removed
    if it raises. `out` must be empty or absent (refused before anything is written)."""
    out = Path(out).absolute()
    require_empty_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    stage = out.with_name(f"{out.name}{PARTIAL}{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)  # this pid's own leftover (pids are reused)
    stage.mkdir()
    try:
        yield stage
        require_empty_dir(out)  # another run may have finished into `out` meanwhile: never replace its files
        publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
