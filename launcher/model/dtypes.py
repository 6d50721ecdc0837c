"""The recipe's dtype names (plan["dtype"], --dtype) as torch dtypes; torch is imported only when asked."""

from __future__ import annotations


def torch_dtype(name: str):
    """torch.bfloat16 / float16 / float32 for bf16 / fp16 / fp32; KeyError for any other name."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
