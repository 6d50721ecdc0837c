"""How two paths stand to each other: the one rule every output check uses. Torch-free."""

from __future__ import annotations

from pathlib import Path


def overlap(a: Path, b: Path) -> str | None:
    """How folder a stands to path b: 'is', 'contains', 'lies inside', or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    return "lies inside" if b in a.parents else None
