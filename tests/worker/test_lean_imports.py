"""A rank imports bitsandbytes, datasets and the trackers only when its plan uses them
(launcher/worker/lean_imports.py), and transformers' Trainer, peft and DeepSpeed's ZeRO checks still work without them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.recipe.load import load_recipe
from launcher.worker.lean_imports import TRACKERS, builds_muon, unused_libraries
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "recipe,overrides,unused",
    [
        ("sft_tiny", [], ["bitsandbytes", "datasets", *TRACKERS]),
        ("pt_tiny", ["train.optimizer=adamw_8bit"], ["datasets", *TRACKERS]),
        ("sft_tiny", ["model.quantization={bits: 4}"], ["datasets", *TRACKERS]),
        # galore_torch and apollo_torch import bitsandbytes' 8-bit AdamW with their package
        (
            "sft_tiny",
            ["train.optimizer=galore_adamw", "distributed.engine=ddp", "method.name=full"],
            ["datasets", *TRACKERS],
        ),
        ("dpo_tiny", [], ["bitsandbytes", *TRACKERS]),
    ],
)
def test_only_the_libraries_a_plan_uses_are_left_importable(recipe, overrides, unused):
    assert unused_libraries(load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides)) == unused


def lean_rank_prints(code: str) -> list[str]:
    """What `code` prints in a fresh interpreter after the tiny recipe's rank has hidden what it does not use."""
    prelude = (
        "import sys; from launcher.worker.lean_imports import skip_unused_libraries; from launcher.recipe.load import load_recipe; "
        "skip_unused_libraries(load_recipe('recipes/sft_tiny.yaml')); "
    )
    proc = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def test_a_lean_rank_still_builds_a_lora_trainer():
    code = (
        "import peft, transformers; from transformers import Trainer; from peft import LoraConfig; "
        "from transformers.utils import is_datasets_available, is_bitsandbytes_available; "
        "print(is_datasets_available(), is_bitsandbytes_available(), sys.modules['datasets'], sys.modules['bitsandbytes'])"
    )
    assert lean_rank_prints(code) == ["False", "False", "None", "None"]


def test_a_lean_zero_rank_skips_deepspeeds_muon_compile_and_its_checks_still_hold():
    """DeepSpeed's ZeRO optimizers import its Muon module for an isinstance check; the real one compiles Muon's
    kernels (dynamo's inductor back end) at import. A lean rank gets the stand-in: AdamW is not Muon, and the
    inductor compiler is never loaded."""
    code = (
        "import torch, deepspeed; from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam; "
        "from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS; "
        "print(isinstance(torch.optim.AdamW([torch.zeros(1, requires_grad=True)]), MuonWithAuxAdam), "
        "torch.optim.AdamW in ZERO_SUPPORTED_OPTIMIZERS, 'torch._inductor.compile_fx' in sys.modules)"
    )
    assert lean_rank_prints(code)[-3:] == ["False", "True", "False"]


def test_deepspeeds_own_muon_stays_real_where_a_config_names_it():
    recipe = load_recipe(ROOT / "recipes" / "sft_tiny.yaml")
    assert not builds_muon(recipe, {"optimizer": {"type": "AdamW"}})
    assert not builds_muon(recipe, None)
    assert builds_muon(recipe, {"optimizer": {"type": "Muon", "params": {}}})  # a user DeepSpeed JSON's optimizer
