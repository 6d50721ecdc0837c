"""Where a run's checkpoints are. Torch-free: the CLI uses it before any process starts."""

from __future__ import annotations

from pathlib import Path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint-N in output_dir (complete = trainer_state.json written)."""
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            steps.append((int(suffix), path))
    return max(steps)[1] if steps else None
