"""Stage rm (reward modelling): a one-score head on the LM, trained on preference pairs."""

from launcher.registry import SCORE_HEAD, Refuse, StageSpec


def refuse_packing(r: dict, refuse: Refuse) -> None:
    """rm and ppo give each sequence its own score or reply: packed rows would mix them."""
    packing = r["data"]["packing"]
    if packing != "none":
        refuse(
            "data.packing",
            f"data.packing: {packing} cannot run with stage: {r['stage']} (each sequence gets its "
            "own score or reply; packed rows would mix them). Fix: set data.packing: none",
        )


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    refuse_packing(r, refuse)
    if r["method"]["name"] == "prefix":
        refuse(
            "method.name",
            "method.name: prefix cannot train stage: rm (the reward model's new score head must be "
            "trained and saved beside the adapter). Fix: use method.name: lora, freeze or full",
        )


SPEC = StageSpec(
    kinds=("preference",),
    rows="launcher.data.preview:SCORED_PAIR_ROWS",
    trainer="launcher.stages.rm:build_trainer",
    head=SCORE_HEAD,
    check=check,
)
