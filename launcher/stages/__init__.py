"""Training stages: each module has one `build_trainer(...) -> transformers.Trainer`."""

from __future__ import annotations

from launcher.stages import sft

STAGES = {"sft": sft.build_trainer}
