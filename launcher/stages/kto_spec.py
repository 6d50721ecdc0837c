"""Stage kto: unpaired replies tagged desirable or not."""

from launcher.registry import Key, StageSpec
from launcher.stages.dpo_spec import PREF_BETA

KEYS = {  # train.*
    "pref_beta": PREF_BETA,
    "kto_desirable_weight": Key(
        "float",
        1.0,
        "KTO weight of the desirable (kto_tag: true) examples' loss",
        low=0,
        low_inclusive=False,
    ),
    "kto_undesirable_weight": Key(
        "float",
        1.0,
        "KTO weight of the undesirable (kto_tag: false) examples' loss",
        low=0,
        low_inclusive=False,
    ),
}


SPEC = StageSpec(
    kinds=("kto",), rows="launcher.data.preview:KTO_ROWS", trainer="launcher.stages.kto:build_trainer", keys=KEYS
)
