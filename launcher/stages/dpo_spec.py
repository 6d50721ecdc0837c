"""Stage dpo: DPO and its pairwise variants (train.pref_loss) on preference pairs."""

from launcher.registry import Key, Refuse, StageSpec


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """pref_loss keys that only make sense together (docs/stages.md)."""
    train = recipe["train"]
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


PREF_LOSSES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
# train.pref_beta: every preference stage's temperature (dpo, kto, orpo declare it)
PREF_BETA = Key(
    "float",
    0.1,
    "preference temperature: beta of DPO/IPO/hinge/SimPO/KTO, lambda (odds-ratio weight) of ORPO",
    low=0,
    low_inclusive=False,
)
KEYS = {  # train.*
    "pref_beta": PREF_BETA,
    "pref_loss": Key(
        "str",
        "sigmoid",
        "DPO loss: sigmoid (DPO), ipo, hinge (SLiC), simpo (reference-free, length-normalised), "
        "orpo (same as stage: orpo)",
        choices=PREF_LOSSES,
    ),
    "pref_ftx": Key("float", 0.0, "weight of an SFT (NLL on the chosen reply) term added to the DPO loss", low=0),
    "simpo_gamma": Key("float", 0.5, "SimPO target reward margin (only with pref_loss: simpo)", low=0),
}


SPEC = StageSpec(
    kinds=("preference",),
    rows="launcher.data.preview:PAIR_ROWS",
    trainer="launcher.stages.dpo:build_trainer",
    check=check,
    keys=KEYS,
)
