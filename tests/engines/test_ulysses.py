"""The Ulysses pieces under fsdp in one process (the two-rank runs: tests/engines/test_sequence_parallel.py):
labels shifted over the whole row before the split, packed samples kept apart by a mask built from position_ids,
and the attention selected for the trained model only."""

from __future__ import annotations

import pytest
import torch

from launcher.data.collate import PaddingCollator
from launcher.data.tokenize import IGNORE_INDEX
from launcher.engines.fsdp_sequence_parallel import shard
from launcher.engines.ulysses import NAME, packed_causal_mask, use_ulysses
from tests.conftest import free_port

pytestmark = pytest.mark.unit

# two samples (7 and 13 tokens) packed into one row
ROWS = [
    {
        "input_ids": list(range(5, 25)),
        "labels": list(range(5, 25)),
        "position_ids": [*range(7), *range(13)],
        "segment_ids": [1] * 7 + [2] * 13,
    }
]


def test_each_shard_predicts_the_token_after_it_even_across_the_split():
    ids = torch.arange(10, 18)[None]
    inputs = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(8)[None]}
    first, second = shard(inputs, 2, 0), shard(inputs, 2, 1)
    assert first["input_ids"].tolist() == [[10, 11, 12, 13]] and first["labels"].tolist() == [[11, 12, 13, 14]]
    assert second["position_ids"].tolist() == [[4, 5, 6, 7]]
    assert second["labels"].tolist() == [[15, 16, 17, IGNORE_INDEX]]


def test_shards_of_several_rows_feed_transformers_loss():
    """A micro batch of 2 rows: each shard is a column slice, which transformers' causal-LM loss views flat (a
    non-contiguous slice raised 'view size is not compatible' at the first step)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    ids = torch.arange(10, 26).view(2, 8)
    inputs = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(8).expand(2, 8)}
    parts = [shard(inputs, 2, index) for index in (0, 1)]
    logits = torch.randn(2, 8, 32)
    whole = ForCausalLMLoss(logits, ids, 32, num_items_in_batch=14)
    split = sum(  # each rank's logits are its own model output: contiguous
        ForCausalLMLoss(logits[:, 4 * i : 4 * i + 4].contiguous(), None, 32, 14, shift_labels=part["shift_labels"])
        for i, part in enumerate(parts)
    )
    assert torch.allclose(split, whole)


def test_the_mask_from_position_ids_is_the_collators_neat_mask():
    batch = PaddingCollator(0, "neat")(ROWS)  # padded to 24: the 4 pads restart positions too
    allowed = batch["attention_mask"] == 0
    mask = packed_causal_mask(batch["position_ids"])
    real = slice(0, 20)
    assert torch.equal(mask[..., real, real], allowed[..., real, real])
    assert packed_causal_mask(torch.arange(8)[None]) is None  # one sample: plain causal attention


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield dist.new_group([0])
    finally:
        dist.destroy_process_group()


def test_the_trained_model_alone_attends_through_the_exchange(one_rank_group):
    """The trained model, given only position_ids, computes what sdpa computes with the collator's 4-D mask; a
    model loaded afterwards (a reference model, a copy for eval) keeps plain sdpa."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from launcher.model.builtin import materialize

    folder = materialize("builtin:tiny-qwen2")
    trained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    use_ulysses(trained, one_rank_group)
    other = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    assert trained.config._attn_implementation == NAME and other.config._attn_implementation == "sdpa"
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
    batch = PaddingCollator(0, "neat")(ROWS)
    with torch.no_grad():
        expected = other(**batch).logits[:, :20]
        trained.train()
        split = trained(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[:, :20]
        trained.eval()
        whole = trained(**batch).logits[:, :20]
    assert torch.allclose(split, expected, atol=1e-5) and torch.allclose(whole, expected, atol=1e-5)
