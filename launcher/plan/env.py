"""The environment every rank starts with."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.model.builtin import is_builtin

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe


def torch_extensions_dir() -> str:
    """Per-interpreter cache for DeepSpeed's JIT ops: torch's default folder is shared by every
    venv, and each venv that loads the op rebuilds it there (a minute each time on CPU)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    return str(Path.home() / ".cache" / "torch_extensions" / f"launcher-{tag}")


def environment(recipe: Recipe, nproc: int, on_gpu: bool) -> dict[str, str]:
    env = {
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    model = recipe["model"]["path"]
    if is_builtin(model) or Path(model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"
    if on_gpu:
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    else:
        env["DS_ACCELERATOR"] = "cpu"
        env["TORCH_EXTENSIONS_DIR"] = torch_extensions_dir()
        env["CUDA_VISIBLE_DEVICES"] = ""
        # the launching shell's OMP_NUM_THREADS where set; else the node's cores shared among its ranks
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    return env
