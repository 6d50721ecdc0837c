"""The kinds of dataset a stage can read (StageSpec.kinds): a leaf module, so spec modules name them without
importing the data pipeline."""

KIND_NEEDS = {
    "sft": "an SFT dataset (no ranking, no kto_tag)",
    "preference": 'a preference dataset ("ranking": true with chosen/rejected)',
    "kto": "a KTO dataset (columns.kto_tag)",
}
# The kinds prompts are taken from (launcher/data/prompts.py): an SFT row's context, a preference row's prompt
PROMPT_KINDS = ("sft", "preference")
