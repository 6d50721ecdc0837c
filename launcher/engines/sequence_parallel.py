"""Ulysses sequence parallelism's rank-side set-up (imported only inside a rank): accelerate's ALST through
DeepSpeed. The Trainer then registers DeepSpeed's Ulysses attention, shards each batch's sequence over the
group (UlyssesSPDataLoaderAdapter) and computes the token-weighted loss over the shards."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def parallelism_args(plan: Mapping[str, Any]) -> dict:
    """TrainingArguments(parallelism_config=...) for the plan's mesh; none without sequence parallelism."""
    sp = plan["mesh"]["sequence_parallel"]
    if sp == 1:
        return {}
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    handler = DeepSpeedSequenceParallelConfig(
        sp_seq_length_is_variable=True,  # rows are padded to their batch's longest, a multiple of sp
        sp_attn_implementation=plan["kernels"]["attn"],
    )
    return {"parallelism_config": ParallelismConfig(sp_backend="deepspeed", sp_size=sp, sp_handler=handler)}
