"""Model-side kernels applied in the worker: liger-kernel's patches (train.loss_kernel: liger)
and regional torch.compile (train.compile: true)."""

from __future__ import annotations


def apply_liger(model) -> None:
    """liger-kernel's fused linear cross-entropy, and its RMSNorm/RoPE/SwiGLU where it knows
    the model family, patched into the loaded model (CUDA only; the planner refuses it elsewhere)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model)


def compile_layers(model) -> int:
    """Compile each decoder layer (the repeated block, so one compilation serves them all and
    compiles far faster than the whole model), with dynamic shapes so packed rows of any length
    do not recompile. Runs inside gradient checkpointing, which wraps the layer call. Returns
    the number of layers compiled."""
    layers = [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
