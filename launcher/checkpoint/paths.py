"""Checkpoint and output folders: finding the latest complete checkpoint, refusing occupied outputs. Torch-free."""

from __future__ import annotations

from pathlib import Path


def require_empty_dir(out: Path) -> None:
    """Refuse to write a consolidated or merged artefact over existing files (ValueError)."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} already holds files. Fix: choose an empty or new folder")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint-N in output_dir (complete = trainer_state.json written)."""
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            steps.append((int(suffix), path))
    return max(steps)[1] if steps else None
