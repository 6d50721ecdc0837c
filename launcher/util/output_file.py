"""What the one-shot commands write: files (launch data --dump, chat --output, sbatch --script, import-lf
--out, eval --out's predictions) and folders (merge --out, consolidate --out). One rule for all: never
over or inside an input of the command or of the run it prepares (output_dir.run_inputs lists a
recipe's), not even with --force; over another existing file only with --force; a folder only new or
empty (checkpoint/staging.py refuses one that holds files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from launcher.errors import RecipeError
from launcher.util.paths import overlap, why_unusable

Inputs = Sequence[tuple[str, str | Path]]  # (what, path) of everything a command or its run reads


def _refuse_inputs(option: str, path: str, out: Path, inputs: Inputs, relations: tuple[str, ...]) -> None:
    for what, source in inputs:
        relation = overlap(out, Path(source).resolve())
        if relation in relations:
            raise RecipeError(
                f"{option} {path}: {relation} {what} ({source}), which this command or its run reads; it is "
                f"never written over, not even with --force. Fix: give {option} a new path outside it"
            )


def check_output_file(option: str, path: str, inputs: Inputs, force: bool, instead: str = "a new file name") -> Path:
    """Refuse (exit 2) to write `path` where it is, or lies inside, one of `inputs`, even with --force;
    refuse an existing file without --force, and a path no file can be created at. Returns the resolved
    path. instead: what the fix offers in place of --force."""
    out = Path(path).resolve()
    _refuse_inputs(option, path, out, inputs, ("is", "lies inside"))
    if out.is_dir():
        raise RecipeError(f"{option} {path} is a folder. Fix: give {option} {instead}")
    if out.exists() and not force:
        raise RecipeError(
            f"{option} {path}: the file exists. Fix: pass --force to replace it, or give {option} {instead}"
        )
    why = why_unusable(out.parent)
    if why is not None:
        raise RecipeError(f"{option} {path}: its folder {out.parent}: {why}. Fix: give {option} {instead}")
    return out


def check_output_folder(option: str, path: str | Path, inputs: Inputs) -> None:
    """A folder output (merge, consolidate): refused where it is, lies inside or holds one of `inputs`,
    or cannot be created; an occupied one is refused by staging.staged_output."""
    _refuse_inputs(option, str(path), Path(path).resolve(), inputs, ("is", "lies inside", "contains"))
    why = why_unusable(Path(path).resolve())
    if why is not None:
        raise RecipeError(f"{option} {path}: {why}. Fix: give {option} a new folder")
