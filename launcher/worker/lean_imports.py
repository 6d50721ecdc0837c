"""Optional libraries a rank would import for nothing, kept out of it.

transformers and peft import bitsandbytes and datasets whenever they are installed, to offer
features a plan may not use. bitsandbytes wraps its kernels in torch.compile at import (about
1.7 s of CPU per rank, before the first step); datasets brings pandas and pyarrow (about 1 s).
A rank whose plan needs neither marks them absent, which those libraries read as "not
installed": the same code path as a machine without them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from launcher.recipe.optimizers import BNB_OPTIMIZERS
from launcher.registry import stage_spec


def unused_libraries(recipe: Mapping[str, Any]) -> list[str]:
    """The optional libraries this recipe's rank never calls."""
    unused = []
    if recipe["model"]["quantization"] is None and recipe["train"]["optimizer"] not in BNB_OPTIMIZERS:
        unused.append("bitsandbytes")
    if not stage_spec(recipe["stage"]).imports_datasets:
        unused.append("datasets")
    return unused


def skip_unused_libraries(recipe: Mapping[str, Any]) -> None:
    """Before transformers or peft is imported: hide the libraries this rank does not use."""
    for name in unused_libraries(recipe):
        if name not in sys.modules:  # already imported (an in-process caller): leave it
            # importlib's "not installed" marker: find_spec gives None, import raises (typeshed types the values Module)
            sys.modules[name] = None  # type: ignore[assignment]
