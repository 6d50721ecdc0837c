"""model.rope_scaling: the loaded model's rotary embedding uses each RoPE type, checked against the formulas of
the methods' papers (linear interpolation, dynamic NTK, YaRN, Llama 3.1's frequency bands) over the builtin
model's own frequencies; the planner's context is factor x original."""

from __future__ import annotations

import math

import pytest
import torch

from launcher.model.builtin import materialize
from launcher.plan import build_plan
from launcher.recipe.load import load_recipe
from launcher.worker.load import load_model
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

TINY = str(ROOT / "recipes" / "sft_tiny.yaml")
FACTOR, ORIGINAL = 4, 2048  # the builtin model's max_position_embeddings


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _rotary(rope_type: str):
    overrides = [f"model.rope_scaling={{type: {rope_type}, factor: {FACTOR}}}", "data.cutoff_len=8192"]
    plan = build_plan(load_recipe(TINY, overrides))
    assert plan["context"]["length"] == FACTOR * ORIGINAL
    model = load_model(plan, materialize("builtin:tiny-qwen2"))
    assert model.config.rope_parameters["rope_type"] == rope_type
    return model.model.rotary_emb, model.config


def _plain(config) -> tuple[torch.Tensor, int, float]:
    theta = config.rope_parameters["rope_theta"]
    dim = config.hidden_size // config.num_attention_heads
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim), dim, theta


def test_linear_divides_every_frequency_by_the_factor():
    rotary, config = _rotary("linear")
    plain, _, _ = _plain(config)
    assert torch.allclose(rotary.inv_freq, plain / FACTOR) and rotary.attention_scaling == 1.0


def test_dynamic_ntk_raises_the_base_beyond_the_original_context():
    rotary, config = _rotary("dynamic")
    plain, dim, theta = _plain(config)
    assert torch.allclose(rotary.inv_freq, plain)  # within the original context: unchanged
    seq = 2 * ORIGINAL
    rotary(torch.zeros(1, dtype=torch.float), torch.arange(seq)[None])
    base = theta * (FACTOR * seq / ORIGINAL - (FACTOR - 1)) ** (dim / (dim - 2))
    assert torch.allclose(rotary.inv_freq, 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))


def test_yarn_scales_attention_and_interpolates_only_the_low_frequencies():
    rotary, config = _rotary("yarn")
    plain, _, _ = _plain(config)
    assert rotary.attention_scaling == pytest.approx(0.1 * math.log(FACTOR) + 1)
    assert torch.allclose(rotary.inv_freq[0], plain[0]) and torch.allclose(rotary.inv_freq[-1], plain[-1] / FACTOR)


def test_llama3_keeps_high_frequencies_and_divides_low_ones():
    rotary, config = _rotary("llama3")
    plain, _, _ = _plain(config)
    wavelength = 2 * math.pi / plain
    high, low = wavelength < ORIGINAL / 4.0, wavelength > ORIGINAL / 1.0  # Llama 3.1's bands
    assert high.any() and low.any()
    assert torch.allclose(rotary.inv_freq[high], plain[high]) and torch.allclose(
        rotary.inv_freq[low], plain[low] / FACTOR
    )
