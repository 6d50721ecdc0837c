"""What to do with a row that cannot be used: raise (data.on_bad_row: error) or skip, count and log it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from launcher.data.defaults import ON_BAD_ROW
from launcher.errors import DataError

log = logging.getLogger("launcher.data")
LOGGED = 10  # skipped rows logged one by one; the rest only counted


class BadRows:
    """Policy for bad rows; `skipped` lists the message of every row skipped so far."""

    def __init__(self, mode: str = ON_BAD_ROW):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be error or skip, got {mode!r}")
        self.mode = mode
        self.skipped: list[str] = []

    @classmethod
    def of(cls, data_cfg: Mapping[str, Any]) -> BadRows:
        """The data section's data.on_bad_row (the schema's default where a partial section has none)."""
        return cls(data_cfg.get("on_bad_row", ON_BAD_ROW))

    def __call__(self, error: DataError) -> None:
        """Raise the error, or record it when skipping."""
        if self.mode == "error":
            raise error
        self.skipped.append(str(error))
        if len(self.skipped) <= LOGGED:
            log.warning("data.on_bad_row=skip: skipped %s", error)
        elif len(self.skipped) == LOGGED + 1:
            log.warning("data.on_bad_row=skip: more bad rows skipped; only counted from here")
