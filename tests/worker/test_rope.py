"""model.rope_scaling: the loaded model's rotary embedding uses each RoPE type, checked against the formulas of
the methods' papers (linear interpolation, dynamic NTK, YaRN, Llama 3.1's frequency bands) over the builtin
model's own frequencies; the planner's context is factor x original. An adapter's files do not record it: chat
(and serve, eval) and merge load its base under the scaling its run's plan.json says, as the worker did."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from launcher.checkpoint.merge import merge
from launcher.infer.chat import load_for_chat
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


def _scaled_plan(rope_type: str) -> dict:
    overrides = [f"model.rope_scaling={{type: {rope_type}, factor: {FACTOR}}}", "data.cutoff_len=8192"]
    return build_plan(load_recipe(TINY, overrides))


def _rotary(rope_type: str):
    plan = _scaled_plan(rope_type)
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


def _adapter(folder: Path, plan: dict) -> Path:
    """A LoRA adapter over the builtin model as a run's output.dir holds it: weights, tokenizer, plan.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = materialize("builtin:tiny-qwen2")
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules="all-linear")
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder


@pytest.mark.parametrize("scaled", [True, False], ids=["rope-scaled run", "unscaled run"])
def test_an_adapters_base_loads_for_chat_and_merge_under_its_runs_rope_scaling(tmp_path, scaled):
    plan = _scaled_plan("linear") if scaled else build_plan(load_recipe(TINY, []))
    adapter = _adapter(tmp_path / "adapter", plan)
    trained = load_model(plan, materialize("builtin:tiny-qwen2")).config  # the oracle: what the worker trained
    model, _ = load_for_chat("builtin:tiny-qwen2", str(adapter))
    merge("builtin:tiny-qwen2", adapter, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    plain, _, _ = _plain(trained)
    for loaded in (model.get_base_model(), merged):
        assert loaded.config.rope_parameters == trained.rope_parameters
        assert loaded.config.max_position_embeddings == trained.max_position_embeddings
        assert torch.allclose(loaded.model.rotary_emb.inv_freq, plain / FACTOR if scaled else plain)


def test_serve_loads_one_base_for_adapters_of_one_rope_scaling_and_refuses_a_mix(tmp_path):
    from launcher.errors import ServeError
    from launcher.infer.serve import served_base

    scaled = _scaled_plan("linear")
    for name, plan in (("long", scaled), ("also-long", scaled), ("short", build_plan(load_recipe(TINY, [])))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "plan.json").write_text(json.dumps(plan))
    assert (
        served_base({n: str(tmp_path / n) for n in ("long", "also-long")}).rope_scaling
        == scaled["context"]["rope_scaling"]
    )
    with pytest.raises(ServeError, match="different RoPE scaling"):
        served_base({n: str(tmp_path / n) for n in ("long", "short")})


def test_a_consolidated_adapter_carries_its_runs_rope_scaling_without_a_plan(tmp_path):
    """`launch consolidate CHECKPOINT --out DIR` writes an adapter folder with no plan.json: the RoPE scaling of the
    run (read from the checkpoint's run folder) goes beside it, so chat loads the base as training did; the run's
    trust_remote_code is not carried (a file in an adapter folder does not decide to run a model's code)."""
    from launcher.checkpoint.inputs import BASE_LOADING, base_loading, carry_base_loading

    plan = _scaled_plan("linear")
    plan["recipe"]["model"]["trust_remote_code"] = True
    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (tmp_path / "run" / "plan.json").write_text(json.dumps(plan))
    out = _adapter(tmp_path / "out", plan)
    (out / "plan.json").unlink()  # as consolidate writes it
    carry_base_loading(checkpoint, out)
    assert (out / BASE_LOADING).is_file()
    carried = base_loading(out)
    assert carried.rope_scaling == plan["context"]["rope_scaling"] and not carried.trust_remote_code
    model, _ = load_for_chat("builtin:tiny-qwen2", str(out))
    plain, _, _ = _plain(load_model(plan, materialize("builtin:tiny-qwen2")).config)
    assert torch.allclose(model.get_base_model().model.rotary_emb.inv_freq, plain / FACTOR)
    unscaled = tmp_path / "unscaled"
    unscaled.mkdir()
    (tmp_path / "plain-run" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "plain-run" / "plan.json").write_text(json.dumps(build_plan(load_recipe(TINY, []))))
    (unscaled / "adapter_config.json").write_text("{}")
    carry_base_loading(tmp_path / "plain-run" / "checkpoint-1", unscaled)
    assert not (unscaled / BASE_LOADING).exists()
