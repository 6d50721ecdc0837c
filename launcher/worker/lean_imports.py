"""Optional libraries a rank would import for nothing, kept out of it.

transformers and peft import bitsandbytes and datasets whenever they are installed, to offer
features a plan may not use. bitsandbytes wraps its kernels in torch.compile at import (about
1.7 s of CPU per rank, before the first step); datasets brings pandas and pyarrow (about 1 s).
DeepSpeed imports mlflow whenever it is installed (its autotuner, about 2 s), and its ZeRO
optimizers import its Muon module, which loads dynamo and inductor (about 1.5 s; a stand-in
takes its place: launcher/compat.py). A rank whose plan needs none of them marks them
absent, which those libraries read as "not installed": the same code path as a machine
without them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from launcher.compat import deepspeed_muon_stand_in
from launcher.recipe.optimizers import BNB_OPTIMIZERS
from launcher.registry import stage_spec

TRACKERS = ("wandb", "mlflow", "swanlab")  # output.report_to's libraries besides TensorBoard


def unused_libraries(recipe: Mapping[str, Any]) -> list[str]:
    """The optional libraries this recipe's rank never calls."""
    unused = []
    if recipe["model"]["quantization"] is None and recipe["train"]["optimizer"] not in BNB_OPTIMIZERS:
        unused.append("bitsandbytes")
    if not stage_spec(recipe["stage"]).imports_datasets:
        unused.append("datasets")
    unused += [name for name in TRACKERS if name not in recipe["output"]["report_to"]]
    return unused


def builds_muon(recipe: Mapping[str, Any], deepspeed: Mapping[str, Any] | None) -> bool:
    """Whether the rank may build a Muon optimizer: the recipe's, or DeepSpeed's from a user config's optimizer."""
    ds_optimizer = str((deepspeed or {}).get("optimizer", {}).get("type", ""))
    return "muon" in recipe["train"]["optimizer"].lower() or "muon" in ds_optimizer.lower()


def skip_unused_libraries(recipe: Mapping[str, Any], deepspeed: Mapping[str, Any] | None = None) -> None:
    """Before transformers or peft is imported: hide the libraries this rank does not use (`deepspeed`: the
    plan's DeepSpeed config)."""
    for name in unused_libraries(recipe):
        if name not in sys.modules:  # already imported (an in-process caller): leave it
            # importlib's "not installed" marker: find_spec gives None, import raises (typeshed types the values Module)
            sys.modules[name] = None  # type: ignore[assignment]
    if not builds_muon(recipe, deepspeed):
        deepspeed_muon_stand_in()
