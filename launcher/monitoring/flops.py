"""Model FLOPs per token and the device peak they are compared with (MFU).

Counted per real (non-pad) input token; every token runs forward and backward, the loss
mask only decides which ones are scored. A linear layer with P = in x out weights costs
2P per token forward, 2P backward for the activation gradient and 2P for its weight
gradient, the last one only when the weight is trained:

    F = 6 * N_trained + 4 * N_frozen             (linear layers, lm_head included)
      + 12 * L * d_attn * sum(n^2) / tokens        (attention scores and mixing)

Full fine-tuning is the familiar 6N. With LoRA the frozen base costs 4N (forward and the
activation gradient that must reach the adapters) and each adapter 6 x its size. The
attention term: per layer, QK^T and softmax x V are 2 matmuls of 2 n^2 d_attn forward and 4
backward, d_attn = heads x head_dim, for a sequence of n tokens (a packed row under greedy
packing, each sample under neat packing). Full n^2, not the causal half: the usual MFU
convention (PaLM). Recomputation by gradient checkpointing is not counted (model FLOPs, not
hardware FLOPs).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

# Dense (no sparsity) bf16 tensor-core peak per GPU in TFLOPs, from the vendors' data sheets,
# matched by whole words of the nvidia-smi / torch.cuda.get_device_name() name ("NVIDIA H100
# 80GB HBM3", "NVIDIA A100-SXM4-80GB"): the first entry whose words all occur wins.
GPU_BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("GB200",), 2500.0),
    (("B200",), 2250.0),
    (("B100",), 1750.0),
    (("H200", "NVL"), 835.0),
    (("H200",), 989.0),
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM (nvidia-smi: "NVIDIA H100 80GB HBM3")
    (("H800", "PCIe"), 756.0),
    (("H800",), 989.0),
    (("H20",), 148.0),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.0),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("A10",), 125.0),
    (("RTX", "6000", "Ada"), 364.0),
    (("RTX", "A6000"), 155.0),
    (("RTX", "4090"), 165.0),
    (("RTX", "3090"), 71.0),
    (("V100",), 125.0),  # no bf16: its fp16 tensor peak
)
PEAK_ENV = "LAUNCHER_PEAK_TFLOPS"  # overrides the table (or the CPU measurement, cpu_peak.py), per device


@dataclass(frozen=True)
class ModelFlops:
    """The counts F needs; `flops(tokens, attention_pairs)` is the model FLOPs of that work."""

    trained: int  # weights of trained linear layers (LoRA A/B, or all of them for full)
    frozen: int  # weights of frozen linear layers
    layers: int  # decoder layers
    attention_width: int  # heads x head_dim

    def flops(self, tokens: float, attention_pairs: float) -> float:
        """tokens: real tokens processed; attention_pairs: sum of n^2 over attended sequences."""
        return (6 * self.trained + 4 * self.frozen) * tokens + 12 * self.layers * self.attention_width * attention_pairs


def model_flops(model: torch.nn.Module) -> ModelFlops:
    """Count linear weights by in x out features: right under ZeRO-3 (empty partitions) and k-bit
    quantization (packed storage) alike."""
    trained = frozen = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            size = module.in_features * module.out_features
            if module.weight.requires_grad:
                trained += size
            else:
                frozen += size
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ModelFlops(trained, frozen, config.num_hidden_layers, config.num_attention_heads * head_dim)


def gpu_peak_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of one GPU by its name, or None when the table does not know it."""
    words = set(re.split(r"[\s\-_]+", name))
    for parts, tflops in GPU_BF16_PEAK_TFLOPS:
        if words.issuperset(parts):
            return tflops * 1e12
    return None


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """Peak FLOP/s of one device and where the figure comes from."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]) * 1e12, f"{PEAK_ENV}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        return peak, (f"{name} dense bf16 data sheet" if peak else f"{name}: not in the peak table, set {PEAK_ENV}")
    from launcher.monitoring.cpu_peak import cache_path, cpu_peak_flops

    peak, cached = cpu_peak_flops(dtype)
    when = f"measured once, cached in {cache_path()}" if cached else "measured now"
    return peak, f"{str(dtype).removeprefix('torch.')} matmul on this CPU, {when}"
