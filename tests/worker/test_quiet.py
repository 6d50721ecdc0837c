"""A run prints no dependency message a user cannot act on, and every other warning still prints
(launcher/util/quiet.py is the one place that filters)."""

from __future__ import annotations

import logging
import warnings

import pytest

from launcher.util import quiet
from tests.conftest import LORA_ZERO3_RUN


@pytest.mark.multiproc
def test_a_zero3_run_logs_no_known_harmless_message(tiny_run):
    logs = "".join(path.read_text(errors="replace") for path in (tiny_run(*LORA_ZERO3_RUN) / "logs").glob("rank-*.log"))
    assert "trainable params" in logs  # the logs are the run's (rank 0 prints this)
    for pattern in quiet.LOG_RECORDS.values():
        assert pattern not in logs
    assert "is deprecated" not in logs


@pytest.mark.unit
def test_only_the_listed_messages_are_dropped(caplog):
    quiet.install()
    quiet.install()  # idempotent: one filter per logger
    assert len(logging.getLogger("accelerate.accelerator").filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("accelerate.accelerator").warning("Gradient accumulation steps mismatch: plugin has 1")
        logging.getLogger("accelerate.accelerator").warning("a warning that matters")
    assert [r.getMessage() for r in caplog.records] == ["a warning that matters"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()  # after simplefilter: our ignores come first again
        warnings.warn("`torch.distributed.reduce_op` is deprecated", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
    with pytest.warns(UserWarning):
        warnings.warn("user warnings are untouched", UserWarning)
