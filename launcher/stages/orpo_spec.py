"""Stage orpo: the reference-free odds-ratio loss on preference pairs."""

from launcher.registry import StageSpec
from launcher.stages.dpo_spec import PREF_BETA

SPEC = StageSpec(
    kinds=("preference",),
    rows="launcher.data.preview:PAIR_ROWS",
    trainer="launcher.stages.orpo:build_trainer",
    keys={"pref_beta": PREF_BETA},
)
