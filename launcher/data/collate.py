"""Batch padding (and, for neat packing, the block-diagonal attention mask), with counters
the throughput logger reads."""

from __future__ import annotations

from collections import Counter

import torch

from launcher.data.tokenize import IGNORE_INDEX


class PaddingCollator:
    """Pads examples to the longest in the batch; counts tokens it has served.

    packing: none -> input_ids, labels, attention_mask (2D)
             greedy -> the same: packed samples attend to each other
             (sequence_parallel > 1 adds position_ids over the whole row: Ulysses needs them)
             neat -> position_ids restart per sample and a 4D additive mask lets each token
                     attend only within its own sample (eager / sdpa: O(L^2) per row);
                     with padding_free (flex_attention / flash_attention_2) the batch is ONE
                     row of the concatenated samples, no padding, plus document_ids (1, N)
                     from which launcher/kernels/attention.py builds the kernel's own
                     sample separation on the device.
    """

    def __init__(
        self,
        pad_token_id: int,
        packing: str = "none",
        padding_free: bool = False,
        mask_dtype: torch.dtype = torch.float32,
        pad_to_multiple_of: int = 8,
        sequence_parallel: int = 1,
        cutoff_len: int = 0,
    ):
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.padding_free = padding_free and packing == "neat"
        self.mask_dtype = mask_dtype
        self.multiple = pad_to_multiple_of
        # Ulysses: the ranks of a group gather each other's rows (so all are padded to one length, cutoff_len
        # rounded up to a multiple of the degree), split them into equal shards, and place those by position_ids
        self.positions = sequence_parallel > 1
        self.fixed_length = -(-cutoff_len // sequence_parallel) * sequence_parallel if self.positions else 0
        self.tokens = 0  # real (non-pad) tokens served so far on this rank
        self.trained_tokens = 0  # tokens with a label
        self.slots = 0  # batch positions, padding included (padding efficiency = tokens / slots)
        self.attention_pairs = 0  # sum of n^2 over the sequences that attend within themselves (MFU)

    def _pad(self, examples: list[dict], key: str, value: int, length: int) -> torch.Tensor:
        return torch.tensor([list(e[key]) + [value] * (length - len(e[key])) for e in examples], dtype=torch.long)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        length = self.fixed_length or -(-longest // self.multiple) * self.multiple
        for example in examples:
            self.tokens += len(example["input_ids"])
            self.trained_tokens += sum(1 for label in example["labels"] if label != IGNORE_INDEX)
            if self.packing == "neat":  # each packed sample attends only to itself
                self.attention_pairs += sum(n * n for n in Counter(example["segment_ids"]).values())
            else:
                self.attention_pairs += len(example["input_ids"]) ** 2
        if self.padding_free:
            self.slots += sum(len(e["input_ids"]) for e in examples)
            return _concatenated(examples)
        self.slots += len(examples) * length
        batch = {
            "input_ids": self._pad(examples, "input_ids", self.pad_token_id, length),
            "labels": self._pad(examples, "labels", IGNORE_INDEX, length),
        }
        if self.packing != "neat":
            batch["attention_mask"] = torch.tensor(
                [[1] * len(e["input_ids"]) + [0] * (length - len(e["input_ids"])) for e in examples], dtype=torch.long
            )
            if self.positions:  # one position per slot of the row, packed samples and padding included
                batch["position_ids"] = torch.arange(length).expand(len(examples), length).clone()
            return batch
        batch["position_ids"] = self._pad(examples, "position_ids", 0, length)
        # padding is segment 0: pads attend to pads only, so no row of the mask is empty
        segments = self._pad(examples, "segment_ids", 0, length)
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
        allowed = (segments[:, :, None] == segments[:, None, :]) & causal
        blocked = torch.tensor(torch.finfo(self.mask_dtype).min, dtype=self.mask_dtype)
        batch["attention_mask"] = torch.where(allowed, torch.tensor(0, dtype=self.mask_dtype), blocked)[:, None]
        return batch


def _concatenated(rows: list[dict]) -> dict[str, torch.Tensor]:
    """The packed rows back to back as one (1, N) row; document_ids number every sample of the
    batch 0, 1, ... (a row's segment ids restart, so they are offset by the samples before it).
    A row's first token is no target, as in a padded batch: it would be predicted from the row before."""
    ids, labels, positions, documents, offset = [], [], [], [], 0
    for row in rows:
        ids += row["input_ids"]
        labels += [IGNORE_INDEX if offset else row["labels"][0], *row["labels"][1:]]
        positions += row["position_ids"]
        documents += [offset + segment - 1 for segment in row["segment_ids"]]
        offset += max(row["segment_ids"])
    return {
        name: torch.tensor([values], dtype=torch.long)
        for name, values in (
            ("input_ids", ids),
            ("labels", labels),
            ("position_ids", positions),
            ("document_ids", documents),
        )
    }
