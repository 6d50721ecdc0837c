"""Stage orpo: the reference-free odds-ratio loss on preference pairs."""

from launcher.registry import StageSpec

SPEC = StageSpec(kinds=("preference",), data="pairs", trainer="launcher.stages.orpo:build_trainer")
