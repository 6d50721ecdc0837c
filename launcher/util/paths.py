"""Paths: how two stand to each other (the one rule every output check uses), whether a folder can be written,
and an atomic write that never follows a planted link. Torch-free."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def overlap(a: Path, b: Path) -> str | None:
    """How folder a stands to path b: 'is', 'contains', 'lies inside', or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    return "lies inside" if b in a.parents else None


def why_unusable(folder: Path) -> str | None:
    """Why this user could not write into `folder` (creating it where missing), or None. Checked by
    trying: creating a folder (removed at once) where `folder` would be made, since root passes
    every permission check but still cannot create a folder under /proc."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        part = "it" if existing == folder else f"{existing}, a folder on its path,"
        return f"{part} is a file, not a folder"
    if existing == folder:
        return None if os.access(folder, os.W_OK | os.X_OK) else "no permission to write there"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".launch-probe-", dir=existing))
    except OSError as err:
        return f"it cannot be created in {existing} ({err.strerror})"
    return None


def write_new(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write text to path atomically: a fresh exclusive file in the same folder, renamed over path,
    so an existing symlink at path is replaced, not followed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            os.fchmod(out.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
