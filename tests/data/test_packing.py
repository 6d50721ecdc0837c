"""Packing: bins are tight and complete; neat packing computes exactly what the samples
compute one by one (per-token losses and training), greedy packing does not."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from launcher.data.collate import PaddingCollator
from launcher.data.packing import pack_examples, pack_lengths
from launcher.data.tokenize import IGNORE_INDEX
from launcher.model.builtin import materialize


def _long_tailed_lengths(count: int, capacity: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(capacity, max(1, int(rng.lognormvariate(5.0, 1.0)))) for _ in range(count)]


@pytest.mark.unit
def test_bins_hold_every_sample_once_and_are_nearly_full():
    capacity = 2048
    lengths = _long_tailed_lengths(20_000, capacity)
    bins = pack_lengths(lengths, capacity)
    assert sorted(i for group in bins for i in group) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in group) <= capacity for group in bins)
    efficiency = sum(lengths) / (len(bins) * capacity)
    assert efficiency >= 0.99, efficiency
    with pytest.raises(ValueError):
        pack_lengths([capacity + 1], capacity)


def _samples(count: int, seed: int = 0) -> list[dict]:
    """Token sequences with a prompt part (label -100) and an answer part."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        prompt, answer = (
            torch.randint(3, 9, (1,), generator=generator).item(),
            torch.randint(2, 12, (1,), generator=generator).item(),
        )
        ids = torch.randint(3, 2000, (prompt + answer,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return samples


def _token_losses(model, batch: dict) -> torch.Tensor:
    """Per-target-token cross entropy of the trained tokens, in row-major order."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[keep], targets[keep], reduction="none")


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(
        materialize("builtin:tiny-qwen2"), dtype=torch.float32, attn_implementation=request.param
    ).eval()


@pytest.mark.multiproc
def test_neat_packing_gives_the_per_token_losses_of_unpacked_samples(model):
    samples = _samples(9)
    packed = pack_examples(samples, capacity=48)
    assert len(packed.rows) < len(samples)
    one_by_one = PaddingCollator(0)
    neat = PaddingCollator(0, packing="neat")
    with torch.no_grad():
        expected = {tuple(s["input_ids"]): _token_losses(model, one_by_one([s])) for s in samples}
        got = _token_losses(model, neat(packed.rows))  # several rows, padded: pads must not disturb
    # reassemble the unpacked losses in packed order
    order = []
    for row in packed.rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        order += [expected[tuple(row["input_ids"][a:b])] for a, b in zip(starts, starts[1:])]
    assert torch.allclose(got, torch.cat(order), atol=1e-5), (got - torch.cat(order)).abs().max()


@pytest.mark.unit
def test_greedy_packing_lets_samples_see_each_other(model):
    samples = _samples(6, seed=1)
    packed = pack_examples(samples, capacity=64)
    with torch.no_grad():
        neat = _token_losses(model, PaddingCollator(0, packing="neat")(packed.rows))
        greedy = _token_losses(model, PaddingCollator(0, packing="greedy")(packed.rows))
    assert neat.shape == greedy.shape
    assert not torch.allclose(neat, greedy, atol=1e-3), "greedy packing is documented as not isolating samples"


@pytest.mark.multiproc
def test_training_on_neat_packed_rows_reaches_the_unpacked_weights():
    """Same samples, same order, 3 SGD steps of LoRA (Adam would amplify rounding in the near-zero first gradients of lora_A): packed rows end where padded batches end."""
    from peft import LoraConfig, get_peft_model

    def train(packing: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        collate = PaddingCollator(0, packing=packing)
        for step in range(3):
            batch_samples = _samples(4, seed=10 + step)
            rows = pack_examples(batch_samples, 64).rows if packing == "neat" else batch_samples
            loss = model(**collate(rows)).loss  # mean over the batch's trained tokens
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    unpacked, packed = train("none"), train("neat")
    for name, value in unpacked.items():
        assert torch.allclose(packed[name], value, atol=1e-5), name


@pytest.mark.unit
def test_launch_data_reports_packing_efficiency(capsys):
    from launcher import cli

    assert cli.main(["data", "recipes/sft_tiny.yaml", "--preview", "0", "data.packing=neat"]) == 0
    out = capsys.readouterr().out
    assert "packing (neat): 284 examples ->" in out and "efficiency" in out


def _reference_best_fit_decreasing(lengths: list[int], capacity: int) -> list[int]:
    """Best-fit decreasing written plainly (every bin scanned per sample): the sorted bin loads."""
    loads: list[int] = []
    for length in sorted(lengths, reverse=True):
        fitting = [i for i, load in enumerate(loads) if load + length <= capacity]
        if fitting:
            best = max(fitting, key=lambda i: loads[i])  # the tightest fit
            loads[best] += length
        else:
            loads.append(length)
    return sorted(loads)


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(6))
def test_bulk_placement_is_best_fit_decreasing(seed):
    rng = random.Random(seed)
    capacity = rng.choice([16, 100, 2048])
    lengths = [
        rng.choice([1, 2, 3, capacity // 3, capacity // 2, capacity])
        if seed % 2
        else min(capacity, max(1, int(rng.lognormvariate(rng.uniform(1, 5), 1.0))))
        for _ in range(400)
    ]
    bins = pack_lengths(lengths, capacity)
    assert sorted(i for group in bins for i in group) == list(range(len(lengths)))
    assert all(group == sorted(group) for group in bins)
    assert sorted(sum(lengths[i] for i in group) for group in bins) == _reference_best_fit_decreasing(lengths, capacity)


@pytest.mark.unit
def test_sequence_parallel_rows_share_one_length_and_carry_their_positions():
    """The ranks of a sequence-parallel group gather each other's rows (one length for all: cutoff_len rounded up
    to the degree) and Ulysses places the shards by position_ids, which run over the whole (greedy-packed) row."""
    rows = [{"input_ids": [5] * n, "labels": [7] * n} for n in (9, 30)]
    packed = pack_examples(rows, 50).rows  # greedy: one row of both samples
    collator = PaddingCollator(0, "greedy", sequence_parallel=4, cutoff_len=50)
    batch = collator(packed)
    assert batch["input_ids"].shape == (1, 52) and batch["labels"][0, 39:].eq(IGNORE_INDEX).all()
    assert batch["position_ids"].tolist() == [list(range(52))]
    assert "position_ids" not in PaddingCollator(0, "greedy")(packed)  # without SP the model counts them itself
