"""Bulk list building with the cyclic garbage collector paused.

Tokenizing and packing allocate millions of small lists and make no reference cycles
(chat-template renders included). With the collector on, each allocation burst triggers
scans of every live container, i.e. of the whole dataset the caller holds: 1.1-3x slower
with 20k conversations loaded (bench/data.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
