"""Stage kto: unpaired replies tagged desirable or not."""

from launcher.registry import StageSpec

SPEC = StageSpec(kinds=("kto",), data="kto", trainer="launcher.stages.kto:build_trainer")
