"""The files the one-shot commands write (launch data --dump, launch chat --output, launch sbatch
--script): never over a file the command reads, and over another existing file only with --force."""

from __future__ import annotations

from pathlib import Path

from launcher.errors import RecipeError
from launcher.util.paths import overlap


def check_output_file(option: str, path: str, inputs: list[tuple[str, str | Path]], force: bool) -> Path:
    """Refuse (exit 2) to write `path` where it is, or lies inside, one of `inputs` ((what, path) pairs),
    even with --force; refuse an existing file without --force. Returns the resolved path."""
    out = Path(path).resolve()
    for what, source in inputs:
        relation = overlap(out, Path(source).resolve())
        if relation in ("is", "lies inside"):
            raise RecipeError(
                f"{option} {path}: {relation} {what} ({source}), which this command reads; it is "
                f"never written over, not even with --force. Fix: give {option} a new file name"
            )
    if out.is_dir():
        raise RecipeError(f"{option} {path} is a folder. Fix: give {option} a file name")
    if out.exists() and not force:
        raise RecipeError(
            f"{option} {path}: the file exists. Fix: pass --force to replace it, or give {option} a new file name"
        )
    return out
