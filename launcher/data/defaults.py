"""The defaults data functions fall back on when called without a whole recipe section (tests, tools,
chat). The schema reads the same constants as its keys' defaults, so each value is written once and the
data layer needs nothing of the recipe layer. Torch-free."""

from __future__ import annotations

TEMPLATE = "auto"  # model.template: the tokenizer's own chat template
ON_BAD_ROW = "error"  # data.on_bad_row
TIMEOUT_MINUTES = 30  # distributed.timeout_minutes: every collective, rendezvous and wait on another rank
# how long a rank waits for another to build a data cache entry (data/cache.py wait_s for a recipe)
WAIT_S = 60.0 * TIMEOUT_MINUTES
