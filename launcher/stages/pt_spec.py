"""Stage pt (continued pre-training): any dataset's text, in cutoff_len blocks."""

from launcher.registry import StageSpec

SPEC = StageSpec(
    kinds=None,
    rows="launcher.data.preview:BLOCK_ROWS",
    trainer="launcher.stages.pt:build_trainer",
    lm_loss=True,
    imports_datasets=False,
)
