"""Stage dpo: DPO and its pairwise variants (train.pref_loss) on preference pairs."""

from launcher.registry import Refuse, StageSpec


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """pref_loss keys that only make sense together (docs/stages.md)."""
    train = r["train"]
    if "train.simpo_gamma" in origins and train["pref_loss"] != "simpo":
        refuse(
            "train.simpo_gamma",
            f"train.simpo_gamma is only used by train.pref_loss: simpo (got {train['pref_loss']}). "
            "Fix: remove train.simpo_gamma or set train.pref_loss: simpo",
        )
    if train["pref_loss"] == "orpo" and train["pref_ftx"] > 0:
        refuse(
            "train.pref_ftx",
            "train.pref_ftx cannot be added to train.pref_loss: orpo (ORPO's loss already holds the "
            "SFT term). Fix: remove train.pref_ftx",
        )


SPEC = StageSpec(kinds=("preference",), data="pairs", trainer="launcher.stages.dpo:build_trainer", check=check)
