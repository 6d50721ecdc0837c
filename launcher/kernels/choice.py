"""Which attention kernel, loss kernel and compile mode a run uses, and why: decided in the
planner (no torch import), from the recipe, the visible device and the installed packages.

A choice that cannot work here is a refusal with the fix; `auto` takes the fastest one that can.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from launcher.errors import RecipeError
from launcher.model.module_names import matches
from launcher.registry import STAGES, method_spec, stage_spec

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe


class Kernels(TypedDict):
    """plan["kernels"]: the attention and loss kernels and the compile choice, each with its reason."""

    attn: str
    attn_reason: str
    padding_free: bool
    loss: str
    loss_reason: str
    compile: bool
    compile_reason: str


# the chunked loss pays off once the logits dominate memory (the HF reference materialises them in fp32)
CHUNKED_MIN_VOCAB = 32_000


def installed(package: str) -> bool:
    """A package is importable, found without importing it (and so without importing torch)."""
    return importlib.util.find_spec(package) is not None


def _require_cuda_package(
    setting: str, on_gpu: bool, module: str, package: str, pip_name: str, why: str, cpu_fix: str, missing_fix: str
) -> None:
    """Refuse a CUDA-only kernel without a GPU, or without the optional package that provides it."""
    if not on_gpu:
        raise RecipeError(f"{setting} needs a CUDA GPU{why} and none is visible. Fix: {cpu_fix}")
    if not installed(module):
        raise RecipeError(
            f"{setting} needs {package}, which is not installed. "
            f"Fix: pip install '.[gpu]' (or pip install {pip_name}), or {missing_fix}"
        )


def attention_choice(recipe: Recipe, on_gpu: bool) -> tuple[str, str]:
    """(attn_implementation, why). Raises RecipeError (the message names the fix) for a kernel
    that cannot run here."""
    attn, neat = recipe["model"]["attn"], recipe["data"]["packing"] == "neat"
    if attn == "flash_attention_2":
        _require_cuda_package(
            "model.attn = 'flash_attention_2'",
            on_gpu,
            "flash_attn",
            "the flash-attn package",
            "flash-attn",
            "",
            "model.attn=auto (or sdpa / flex_attention)",
            "model.attn=auto",
        )
        return attn, "chosen in the recipe" + (": padding-free packed rows, varlen kernel" if neat else "")
    if attn == "flex_attention":
        if not on_gpu:  # torch raises "FlexAttention does not support backward on CPU" at the first step
            raise RecipeError(
                "model.attn = 'flex_attention' trains on CUDA only: torch has no flex_attention backward "
                "on CPU. Fix: model.attn=auto (on CPU: sdpa, neat packing with a dense per-row mask)"
            )
        return attn, "chosen in the recipe" + (": padding-free packed rows, block-sparse document mask" if neat else "")
    if attn in ("sdpa", "eager"):
        note = ": neat packing falls back to a dense L x L mask per row" if neat else ""
        return attn, "chosen in the recipe" + note
    # auto
    if recipe["distributed"]["sequence_parallel"] != 1 and recipe["distributed"]["engine"] == "fsdp":
        return "sdpa", "auto: sequence parallelism under fsdp, whose Ulysses exchange runs around sdpa"
    if on_gpu and installed("flash_attn"):
        return "flash_attention_2", "auto: CUDA and flash-attn installed (varlen kernel, padding-free packing)"
    if neat:
        if on_gpu:
            return "flex_attention", (
                "auto: neat packing on CUDA without flash-attn: torch's flex_attention keeps "
                "samples apart with a block-sparse mask (installing flash-attn would use its "
                "varlen kernel instead)"
            )
        return "sdpa", (
            "auto: neat packing on CPU keeps sdpa with a dense per-row mask (torch has no flex_attention "
            "backward on CPU; on CUDA auto packs padding-free rows)"
        )
    return "sdpa", "auto: sdpa" + ("" if not on_gpu else " (installing flash-attn would use flash_attention_2)")


def padding_free(attn: str, packing: str) -> bool:
    """Neat-packed batches become one concatenated row when the kernel separates samples itself."""
    return packing == "neat" and attn in ("flex_attention", "flash_attention_2")


def _dft_kernel(kernel: str) -> tuple[str, str]:
    """train.sft_loss: dft weights each token by its probability from the full logits: only the plain loss can
    (sequence parallelism, which would split them, is refused with it: recipe/sequence_parallel.py)."""
    if kernel in ("chunked", "liger"):
        raise RecipeError(
            f"train.loss_kernel = {kernel!r} computes plain cross-entropy and cannot weight it as train.sft_loss: dft "
            "does. Fix: train.loss_kernel=auto (picks plain), or train.sft_loss=ce"
        )
    return "plain", "train.sft_loss: dft weights each token's loss by its probability, from the full logits"


# the LM head's weight, and the embeddings' that a tied head shares
HEAD_PARAMETERS = ("lm_head.weight", "model.embed_tokens.weight")


def trains_output_head(method: Mapping[str, Any]) -> bool:
    """The method trains the LM head: full, or freeze's extra_modules / LoRA's and OFT's additional_target name
    the head (or tied embeddings), matched as those methods match module names."""
    named = method.get("extra_modules") or method.get("additional_target") or []
    return method["name"] == "full" or any(matches(name, named) for name in HEAD_PARAMETERS)


def _fsdp_trained_head(recipe: Recipe) -> bool:
    # FSDP2 frees the trained head's gathered weight after its first gradient, while the chunked loss recomputes
    # the head for every slice in backward: the process crashes (measured: a segmentation fault on CPU)
    return recipe["distributed"]["engine"] == "fsdp" and trains_output_head(recipe["method"])


def loss_choice(recipe: Recipe, on_gpu: bool, vocab_size: int | None) -> tuple[str, str]:
    """(plain | chunked | liger, why). Raises RecipeError for a kernel that cannot run here."""
    kernel, stage, method = recipe["train"]["loss_kernel"], recipe["stage"], recipe["method"]["name"]
    own_loss = stage_spec(stage).lm_loss
    if kernel != "plain" and kernel != "auto" and not own_loss:
        loss_stages = "/".join(name for name in STAGES if stage_spec(name).lm_loss)
        raise RecipeError(
            f"train.loss_kernel = {kernel!r} applies to stages {loss_stages}; stage {stage} "
            "computes its loss in TRL. Fix: train.loss_kernel=auto"
        )
    if kernel != "plain" and kernel != "auto" and method_spec(method).virtual_tokens:
        raise RecipeError(
            f"train.loss_kernel = {kernel!r} does not work with method.name: {method} (its virtual tokens "
            "enter through PEFT's forward, which a fused loss bypasses). Fix: train.loss_kernel=auto"
        )
    if recipe["train"].get("sft_loss") == "dft":
        return _dft_kernel(kernel)
    if kernel == "liger":
        _require_cuda_package(
            "train.loss_kernel = 'liger'",
            on_gpu,
            "liger_kernel",
            "liger-kernel",
            "liger-kernel",
            " (its kernels are Triton)",
            "train.loss_kernel=chunked (pure torch, any device)",
            "train.loss_kernel=chunked",
        )
        return kernel, "chosen in the recipe: liger-kernel's fused linear cross-entropy"
    if kernel == "chunked" and _fsdp_trained_head(recipe):
        raise RecipeError(
            "train.loss_kernel = 'chunked' cannot train the LM head under distributed.engine: fsdp (FSDP2 frees "
            f"the gathered head after its first slice's gradient; method.name: {method} trains it). Fix: "
            "train.loss_kernel=auto (plain here), or distributed.engine: deepspeed"
        )
    if kernel in ("plain", "chunked"):
        return kernel, "chosen in the recipe"
    if not own_loss or method_spec(method).virtual_tokens:
        return "plain", f"auto: stage {stage} / method {method} keeps its own loss"
    if on_gpu and installed("liger_kernel") and recipe["distributed"]["sequence_parallel"] == 1:
        return "liger", "auto: CUDA and liger-kernel installed (fused linear cross-entropy)"
    if _fsdp_trained_head(recipe):
        return "plain", "auto: the chunked loss cannot train the LM head under fsdp (FSDP2 frees it between slices)"
    if vocab_size is not None and vocab_size >= CHUNKED_MIN_VOCAB:
        hint = " (installing liger-kernel would fuse it on CUDA)" if on_gpu else ""
        return (
            "chunked",
            f"auto: vocabulary {vocab_size:,} >= {CHUNKED_MIN_VOCAB:,}: the logits are never materialised{hint}",
        )
    size = "unknown" if vocab_size is None else f"{vocab_size:,}"
    return "plain", f"auto: vocabulary {size} < {CHUNKED_MIN_VOCAB:,} (or unknown): full logits are cheap"


def compile_choice(recipe: Recipe, on_gpu: bool) -> tuple[bool, str]:
    """(compile?, why). Raises RecipeError where torch.compile cannot work."""
    if not recipe["train"]["compile"]:
        return False, "off (train.compile: true compiles each decoder layer)"
    if not on_gpu and shutil.which("c++") is None and shutil.which("g++") is None:
        raise RecipeError(
            "train.compile = true on CPU needs a C++ compiler (inductor builds its kernels with it) "
            "and none is on PATH. Fix: install g++, or train.compile=false"
        )
    method = recipe["method"]["name"]
    if method_spec(method).virtual_tokens:
        raise RecipeError(
            f"train.compile = true does not work with method.name: {method} (PEFT feeds its virtual tokens "
            "as a growing cache, which recompiles every step). Fix: train.compile=false"
        )
    return True, "on: each decoder layer compiled once (dynamic shapes, so packed rows of any length reuse it)"


def kernel_plan(recipe: Recipe, on_gpu: bool, vocab_size: int | None) -> Kernels:
    """The plan's `kernels` entry; raises RecipeError with the fix for a choice that cannot work."""
    attn, attn_why = attention_choice(recipe, on_gpu)
    loss, loss_why = loss_choice(recipe, on_gpu, vocab_size)
    compiled, compile_why = compile_choice(recipe, on_gpu)
    return {
        "attn": attn,
        "attn_reason": attn_why,
        "padding_free": padding_free(attn, recipe["data"]["packing"]),
        "loss": loss,
        "loss_reason": loss_why,
        "compile": compiled,
        "compile_reason": compile_why,
    }


def format_kernels(kernels: Kernels) -> list[str]:
    """The plan's kernel lines, for `launch plan`."""
    rows = [f"attention: {kernels['attn']} ({kernels['attn_reason']})"]
    if kernels["padding_free"]:
        rows.append("packing: padding-free rows (one concatenated row per micro-batch, no L x L mask)")
    rows += [f"loss: {kernels['loss']} ({kernels['loss_reason']})", f"compile: {kernels['compile_reason']}"]
    missing = [
        name
        for name, package in (("flash-attn", "flash_attn"), ("liger-kernel", "liger_kernel"))
        if not installed(package)
    ]
    if missing:
        rows.append(
            f"not installed: {', '.join(missing)} (pip install '.[gpu]' on CUDA: flash-attn's varlen "
            "attention, liger's fused loss and RMSNorm/RoPE/SwiGLU; the torch-only path needs neither)"
        )
    return rows
