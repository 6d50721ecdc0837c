"""The environment every rank starts with."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError, listing
from launcher.model.builtin import is_builtin

if TYPE_CHECKING:
    from launcher.recipe.types import DistributedSection, Recipe

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def torch_extensions_dir() -> str:
    """Per-interpreter cache for DeepSpeed's JIT ops: torch's default folder is shared by every
    venv, and each venv that loads the op rebuilds it there (a minute each time on CPU)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    return str(Path.home() / ".cache" / "torch_extensions" / f"launcher-{tag}")


def check_env_forward(dist: DistributedSection) -> None:
    """distributed.env_forward holds variable names only (the ssh backend sends their values)."""
    bad = [name for name in dist["env_forward"] if not ENV_NAME.fullmatch(name)]
    if bad:
        raise RecipeError(
            f"distributed.env_forward: {listing(map(repr, bad))} is not an environment variable name. "
            "Fix: list names like NCCL_SOCKET_IFNAME (letters, digits, _)"
        )


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
