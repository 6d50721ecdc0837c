"""The DeepSpeed engine's rank-side set-up (imported only inside a rank)."""

from __future__ import annotations


def init_comm(plan: dict) -> None:
    """On CPU accelerate sets up plain gloo, which DeepSpeed's comm layer would not see: wrap it."""
    if plan["world"]["device"] == "cpu":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
