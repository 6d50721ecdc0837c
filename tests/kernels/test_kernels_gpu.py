"""The GPU tier of the kernel tests (marked gpu: skipped where torch sees no CUDA device;
bench/gpu_check.py runs them on one H100/H200). bf16 tolerance: bf16 keeps 8 mantissa bits
(relative step 2^-8 = 3.9e-3) and packing changes the order of the attention and loss sums, so
the losses must agree to 1% and every gradient must point the same way (cosine > 0.99), where a
leak across samples or a wrong normalisation moves the loss by far more (tests/test_packing.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from launcher.data.collate import PaddingCollator
from launcher.data.packing import pack_examples
from launcher.kernels.choice import installed
from tests.conftest import free_port, run_launch
from tests.kernels.test_kernels import CUTOFF, _samples, _trainer, unpacked_reference

pytestmark = pytest.mark.gpu


def _model(attn: str):
    from transformers import AutoModelForCausalLM

    from launcher.model.builtin import materialize

    torch.manual_seed(0)
    return (
        AutoModelForCausalLM.from_pretrained(
            materialize("builtin:tiny-qwen2"), dtype=torch.bfloat16, attn_implementation=attn
        )
        .cuda()
        .train()
    )


def _close(got: float, expected: float, grads: dict, expected_grads: dict) -> None:
    assert abs(got - expected) <= 1e-2 * abs(expected), (got, expected)
    for name, grad in grads.items():
        cosine = F.cosine_similarity(grad.float().flatten(), expected_grads[name].float().flatten(), dim=0)
        assert cosine > 0.99, (name, cosine.item())


def _packed_loss(model, tmp_path, attn: str, loss: str) -> tuple[float, dict]:
    rows = pack_examples(_samples(), CUTOFF).rows
    batch = {k: v.cuda() for k, v in PaddingCollator(0, "neat", padding_free=True)(rows).items()}
    trained = sum(sum(label != -100 for label in s["labels"][1:]) for s in _samples())
    value = _trainer(model, tmp_path, attn, loss).compute_loss(
        model, batch, num_items_in_batch=torch.tensor(trained).cuda()
    )
    value.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return value.item(), grads


ATTENTION = ["flex_attention"] + (["flash_attention_2"] if installed("flash_attn") else [])
LOSSES = ["plain", "chunked"] + (["liger"] if installed("liger_kernel") else [])


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("loss", LOSSES)
def test_padding_free_packing_equals_unpacked_in_bf16(tmp_path, attn, loss):
    expected, _, expected_grads = unpacked_reference(_model("sdpa"), _samples())
    model = _model(attn)
    if loss == "liger":
        from launcher.kernels.compile import apply_liger

        apply_liger(model)
    got, grads = _packed_loss(model, tmp_path, attn, "plain" if loss == "liger" else loss)
    _close(got, expected, grads, expected_grads)


def test_compiled_layers_match_eager_and_do_not_recompile_per_row_length(tmp_path):
    from launcher.kernels.compile import compile_layers

    expected, _, expected_grads = unpacked_reference(_model("sdpa"), _samples())
    model = _model("flex_attention")
    compile_layers(model)
    _packed_loss(model, tmp_path, "flex_attention", "chunked")  # compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        got, grads = _packed_loss(model, tmp_path, "flex_attention", "chunked")
    _close(got, expected, grads, expected_grads)


def test_nccl_zero3_lora_through_the_cli(tmp_path):
    proc = run_launch(
        [
            "recipes/sft_tiny.yaml",
            f"output.dir={tmp_path / 'run'}",
            f"distributed.master_port={free_port()}",
            "model.dtype=bf16",
            "data.packing=neat",
            "train.max_steps=3",
            "train.compile=true",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
