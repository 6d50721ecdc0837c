"""Known-harmless messages of our dependencies, silenced in one place.

A run should print nothing a user cannot act on. Each entry names the message, where it comes
from and why it is harmless here; any other warning, of the same library included, still
prints. `install()` runs at the start of the CLI and of every rank.
"""

from __future__ import annotations

import logging
import re
import warnings

# (category, message regex): Python warnings
WARNINGS = (
    # DeepSpeed calls torch.distributed's renamed collectives every step: one warning per call drowns the log
    (FutureWarning, r"`torch\.distributed\.\w+` is deprecated"),
    # TRL's unwrap_model_for_generation calls transformers' renamed checkpointing methods on every PPO rollout
    (FutureWarning, r"`\w*gradient_checkpointing\w*` is deprecated"),
)

# logger name -> message regex: library log records
LOG_RECORDS = {
    # the plan writes train.grad_accum into the DeepSpeed config; accelerate's plugin starts at 1 and
    # takes DeepSpeed's value, which is the recipe's
    "accelerate.accelerator": r"Gradient accumulation steps mismatch",
    # an optional kernel from the hub; bitsandbytes falls back to its own CPU 4-bit matmul
    "bitsandbytes.backends.cpu.ops": r"Failed to load CPU gemm_4bit_forward",
}


class _Drop(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Silence exactly the messages above (idempotent)."""
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, pattern in LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_Drop(pattern))
