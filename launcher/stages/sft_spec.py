"""Stage sft: supervised fine-tuning on SFT datasets."""

from launcher.registry import StageSpec

SPEC = StageSpec(
    kinds=("sft",),
    rows="launcher.data.preview:SFT_ROWS",
    trainer="launcher.stages.sft:build_trainer",
    lm_loss=True,
    imports_datasets=False,
    packs=True,
)
