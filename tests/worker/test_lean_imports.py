"""A rank imports bitsandbytes and datasets only when its plan uses them (launcher/worker/lean_imports.py),
and transformers' Trainer and peft still load without them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.recipe.load import load_recipe
from launcher.worker.lean_imports import unused_libraries
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "recipe,overrides,unused",
    [
        ("sft_tiny", [], ["bitsandbytes", "datasets"]),
        ("pt_tiny", ["train.optimizer=adamw_8bit"], ["datasets"]),
        ("sft_tiny", ["model.quantization={bits: 4}"], ["datasets"]),
        # galore_torch and apollo_torch import bitsandbytes' 8-bit AdamW with their package
        ("sft_tiny", ["train.optimizer=galore_adamw", "distributed.engine=ddp", "method.name=full"], ["datasets"]),
        ("dpo_tiny", [], ["bitsandbytes"]),
    ],
)
def test_only_the_libraries_a_plan_uses_are_left_importable(recipe, overrides, unused):
    assert unused_libraries(load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides)) == unused


def test_a_lean_rank_still_builds_a_lora_trainer():
    code = (
        "import sys; from launcher.worker.lean_imports import skip_unused_libraries; from launcher.recipe.load import load_recipe; "
        "skip_unused_libraries(load_recipe('recipes/sft_tiny.yaml')); "
        "import peft, transformers; from transformers import Trainer; from peft import LoraConfig; "
        "from transformers.utils import is_datasets_available, is_bitsandbytes_available; "
        "print(is_datasets_available(), is_bitsandbytes_available(), sys.modules['datasets'], sys.modules['bitsandbytes'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "False", "None", "None"]
