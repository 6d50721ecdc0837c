"""A pure-torch Ulysses attention (imported only inside a rank): each rank of a sequence-parallel group holds 1/N
of every sequence; an all-to-all trades that for all of the sequence and 1/N of the heads, sdpa attends, and the
inverse all-to-all hands each rank its own tokens back. Samples packed into one row stay apart: the mask is built
after the exchange from the full row's position_ids (each packed sample restarts them at 0)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

NAME = "launcher_ulysses"  # the attention implementation a model selects by config._attn_implementation


def _exchange(tensor: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Split `scatter_dim` over the group's ranks and concatenate what they send along `gather_dim`."""
    parts = [part.contiguous() for part in tensor.chunk(dist.get_world_size(group), dim=scatter_dim)]
    received = [torch.empty_like(part) for part in parts]
    dist.all_to_all(received, parts, group=group)
    return torch.cat(received, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """The exchange, differentiable: the gradient takes the inverse exchange back."""

    @staticmethod
    def forward(ctx, tensor, group, scatter_dim: int, gather_dim: int):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _exchange(tensor, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _exchange(grad, ctx.group, gather_dim, scatter_dim), None, None, None


def heads_for_whole_sequence(states: torch.Tensor, group) -> torch.Tensor:
    """(batch, heads, seq / N, dim) -> (batch, heads / N, seq, dim)."""
    return _AllToAll.apply(states, group, 1, 2)


def sequence_for_all_heads(states: torch.Tensor, group) -> torch.Tensor:
    """(batch, heads / N, seq, dim) -> (batch, heads, seq / N, dim)."""
    return _AllToAll.apply(states, group, 2, 1)


def whole_positions(position_ids: torch.Tensor, group) -> torch.Tensor:
    """The group's position_ids shards (batch, seq / N) put back into whole rows (batch, seq)."""
    shards = [torch.empty_like(position_ids) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shards, position_ids.contiguous(), group=group)
    return torch.cat(shards, dim=1)


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Where a row holds several samples (its position_ids restart at 0), the (batch, 1, seq, seq) boolean mask that
    lets each token attend to its own sample's earlier tokens; None for rows of one sample (plain causal)."""
    samples = (position_ids == 0).cumsum(dim=1)
    if bool((samples[:, -1] <= 1).all()):
        return None
    length = position_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return ((samples[:, :, None] == samples[:, None, :]) & causal)[:, None]


def _replicated_kv(states: torch.Tensor, degree: int) -> torch.Tensor:
    """Fewer KV heads than ranks (they divide the degree): each repeated so that every rank receives one."""
    kv_heads = states.shape[1]
    return states if kv_heads % degree == 0 else states.repeat_interleave(degree // kv_heads, dim=1)


def ulysses_attention(group):
    """The attention function (transformers' AttentionInterface signature) for this sequence-parallel group. In
    eval (whole, unsplit rows on every rank) it is plain sdpa with the model's mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    degree = dist.get_world_size(group)

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if not module.training:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        mask = packed_causal_mask(whole_positions(kwargs["position_ids"], group))
        query = heads_for_whole_sequence(query, group)
        key = heads_for_whole_sequence(_replicated_kv(key, degree), group)
        value = heads_for_whole_sequence(_replicated_kv(value, degree), group)
        output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=mask is None,
            scale=scaling,
            enable_gqa=key.shape[1] != query.shape[1],
        )
        return sequence_for_all_heads(output, group).transpose(1, 2).contiguous(), None

    return attention


def use_ulysses(model, group) -> None:
    """Select the Ulysses attention for this model only: the name is new, so every other model the rank builds
    (a reference or reward model, a copy for eval) keeps its own attention."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, ulysses_attention(group))
    AttentionMaskInterface.register(NAME, sdpa_mask)  # eval attends through sdpa with the model's mask
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config._attn_implementation = NAME
