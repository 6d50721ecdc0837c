"""Recipe defaults that library functions fall back on when called without a whole recipe
section (tests, tools), read from the schema so each value is written once. Torch-free."""

from __future__ import annotations

from launcher.schema import SCHEMA

TEMPLATE: str = SCHEMA["model"]["template"].default  # auto: the tokenizer's own chat template
ON_BAD_ROW: str = SCHEMA["data"]["on_bad_row"].default
# how long a rank waits for another to build a data cache entry (data/cache.py wait_s for a recipe)
WAIT_S: float = 60.0 * SCHEMA["distributed"]["timeout_minutes"].default
