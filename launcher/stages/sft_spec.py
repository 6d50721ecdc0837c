"""Stage sft: supervised fine-tuning on SFT datasets."""

from launcher.registry import Key, StageSpec

SFT_LOSSES = ("ce", "dft")
KEYS = {  # train.*
    "sft_loss": Key(
        "str",
        "ce",
        "ce: cross-entropy; dft: Dynamic Fine-Tuning, each token's cross-entropy weighted by its detached predicted "
        "probability (LLaMA-Factory's use_dft_loss; needs train.loss_kernel plain, which auto picks)",
        choices=SFT_LOSSES,
    ),
}

SPEC = StageSpec(
    kinds=("sft",),
    rows="launcher.data.preview:SFT_ROWS",
    trainer="launcher.stages.sft:build_trainer",
    lm_loss=True,
    imports_datasets=False,
    packs=True,
    keys=KEYS,
)
