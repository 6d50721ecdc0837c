"""Stage rm (reward modelling): a one-score head on the LM, trained on preference pairs."""

from launcher.registry import SCORE_HEAD, Refuse, StageSpec


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    if recipe["method"]["name"] == "prefix":
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
