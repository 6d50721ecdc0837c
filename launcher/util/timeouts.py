"""A recipe's timeout as the seconds every waiting call accepts. Torch-free.

LLaMA-Factory's examples set `ddp_timeout: 180000000` (5.7 years) to mean "never": poll()/select() take
milliseconds as a C int, so any wait longer than 2**31-1 ms raises `OverflowError: timeout is too large`
(subprocess.communicate, selectors); threading's and torch's limits are higher. Every place a recipe's
timeout reaches a wait takes it through `timeout_seconds`, capped at that smallest limit (about 24.8 days)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_TIMEOUT_S = (2**31 - 1) // 1000  # whole seconds below poll()'s int-milliseconds limit
MAX_TIMEOUT_MINUTES = MAX_TIMEOUT_S // 60


def timeout_seconds(minutes: float) -> float:
    """`minutes` in seconds, no longer than the OS's longest wait."""
    return float(min(minutes * 60, MAX_TIMEOUT_S))


def recipe_timeout_s(recipe: Mapping[str, Any]) -> float:
    """distributed.timeout_minutes of a loaded recipe, in seconds, capped."""
    return timeout_seconds(recipe["distributed"]["timeout_minutes"])
