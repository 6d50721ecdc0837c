"""The SFT dataset of a recipe: registry -> messages -> token ids and labels."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.data.formats import to_messages
from launcher.data.registry import read_rows, resolve_dataset
from launcher.data.tokenize import IGNORE_INDEX, encode_conversation


@dataclass
class SFTData:
    examples: list[dict]   # {"input_ids": [...], "labels": [...]}
    dropped: int           # examples left with no trainable token after cutoff


def load_conversations(names: list[str], data_cfg: dict) -> list[list[dict]]:
    """Messages of every example of the named datasets, max_samples applied per dataset."""
    conversations = []
    for name in names:
        spec = resolve_dataset(name, data_cfg["dataset_dir"])
        rows = read_rows(spec)
        if data_cfg["max_samples"] is not None:
            rows = rows[: data_cfg["max_samples"]]
        conversations += to_messages(rows, spec)
    return conversations


def build_sft_data(names: list[str], data_cfg: dict, tokenizer) -> SFTData:
    """Tokenized, masked examples; those with no trainable token are dropped and counted."""
    examples, dropped = [], 0
    for messages in load_conversations(names, data_cfg):
        encoded = encode_conversation(tokenizer, messages, data_cfg["cutoff_len"],
                                      data_cfg["train_on_prompt"], data_cfg["mask_history"])
        if all(label == IGNORE_INDEX for label in encoded.labels):
            dropped += 1
            continue
        examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    return SFTData(examples, dropped)
