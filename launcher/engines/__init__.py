"""Training engines, one torch-free spec module each (registered in launcher/registry.py ENGINES): how the
ranks shard and step, what the planner counts, which method combinations they refuse, how the worker sets
them up. The worker-side parts they name are imported only inside a rank."""

from launcher.registry import Refuse


def refuse_offload_beside_auto(dist: dict, refuse: Refuse) -> None:
    """distributed.zero: auto picks the offload with the stage; an explicit offload beside it is refused."""
    if dist["zero"] == "auto" and dist["offload"] != "none":
        refuse(
            "distributed.offload",
            f"distributed.offload: {dist['offload']} is chosen by distributed.zero: auto. "
            "Fix: remove distributed.offload, or set distributed.zero to a fixed value",
        )
