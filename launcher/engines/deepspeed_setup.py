"""The DeepSpeed engine's rank-side set-up (imported only inside a rank)."""

from __future__ import annotations

from datetime import timedelta

from launcher.util.timeouts import recipe_timeout_s


def init_comm(plan: dict) -> None:
    """On CPU accelerate sets up plain gloo, which DeepSpeed's comm layer would not see: wrap it. The group
    exists already (with the recipe's timeout); the same timeout is given in case DeepSpeed builds its own."""
    if plan["world"]["device"] == "cpu":
        import deepspeed

        timeout = timedelta(seconds=recipe_timeout_s(plan["recipe"]))
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, timeout=timeout)
