"""Sample separation for padding-free packed rows, built on the device from document_ids (1, N):
flex_attention gets a block-sparse document-causal BlockMask as its attention_mask, flash-attention
gets cumulative sequence lengths for its varlen kernel. Neither ever holds an N x N tensor. Right-padded
rows reach sdpa without their padding mask, so it runs is_causal instead of reading an L x L mask."""

from __future__ import annotations

import torch


def document_mask(document_ids: torch.Tensor):
    """A BlockMask: token q sees token k when both are in the same sample and k <= q."""
    from torch.nn.attention.flex_attention import create_block_mask

    documents = document_ids[0]

    def same_document_causal(batch, head, q, k):
        return (documents[q] == documents[k]) & (q >= k)

    length = documents.numel()
    return create_block_mask(same_document_causal, None, None, length, length, device=documents.device)


def varlen_kwargs(document_ids: torch.Tensor) -> dict:
    """flash-attention's varlen arguments: where each sample starts in the row, and the longest one."""
    documents = document_ids[0]
    lengths = torch.bincount(documents - documents[0])  # samples are numbered 0, 1, ... in row order
    cumulative = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max())
    return {"cu_seq_lens_q": cumulative, "cu_seq_lens_k": cumulative, "max_length_q": longest, "max_length_k": longest}


def packed_attention_inputs(inputs: dict, attn: str) -> dict:
    """The model inputs with document_ids replaced by what the attention kernel reads."""
    inputs = dict(inputs)
    documents = inputs.pop("document_ids", None)
    if documents is None:
        return inputs
    if attn == "flex_attention":
        inputs["attention_mask"] = document_mask(documents)
    elif attn == "flash_attention_2":
        inputs.update(varlen_kwargs(documents))
    else:
        raise ValueError(f"padding-free rows need flex_attention or flash_attention_2, not {attn}")
    return inputs


def without_right_padding_mask(inputs: dict, attn: str, routed: bool) -> dict:
    """The model inputs without a 2D attention_mask whose zeros only end each row (right padding), under sdpa.
    A causal decoder's real tokens attend to earlier tokens only, so trailing pads change none of them, and pads
    carry no label; but given such a mask transformers builds a (batch, 1, L, L) one for sdpa, O(L^2) per row
    (2 GiB per rank at 20k tokens on CPU), where without it sdpa runs is_causal. Kept for a mixture-of-experts
    model that returns router logits (routed): its load-balancing loss reads the mask to leave pads out."""
    mask = inputs.get("attention_mask")
    if attn != "sdpa" or routed or mask is None or mask.dim() != 2:
        return inputs
    if bool((mask[:, 1:] > mask[:, :-1]).any()):  # a 1 after a 0: left padding or a gap, the mask is needed
        return inputs
    return {key: value for key, value in inputs.items() if key != "attention_mask"}
