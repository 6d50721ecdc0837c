"""`launch merge`'s note on an adapter trained over a k-bit base names the method by the adapter's peft_type (QLoRA,
QOFT); in-process over the builtin model (the merge's tensors are checked in test_checkpoint.py and
tests/methods/test_methods.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.checkpoint.merge import merge
from launcher.model.builtin import materialize

pytestmark = pytest.mark.unit


def _adapter(folder: Path, method: str, bits: int | None) -> Path:
    """A PEFT adapter over the builtin model, beside the plan.json of a run with (or without) a k-bit base."""
    from peft import LoraConfig, OFTConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = {
        "lora": LoraConfig(r=4, target_modules=["q_proj"]),
        "oft": OFTConfig(r=0, oft_block_size=4, target_modules=["q_proj"]),
    }[method]
    get_peft_model(AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2")), config).save_pretrained(
        folder
    )
    quantization = {"bits": bits, "type": "nf4"} if bits else None
    (folder / "plan.json").write_text(json.dumps({"recipe": {"model": {"quantization": quantization}}}))
    return folder


@pytest.mark.parametrize(
    "method, bits, named", [("oft", 4, "QOFT over a 4-bit base"), ("lora", 8, "QLoRA over a 8-bit base")]
)
def test_merge_names_the_kbit_method_of_the_adapter(tmp_path, method, bits, named):
    notes = merge("builtin:tiny-qwen2", _adapter(tmp_path / "adapter", method, bits), tmp_path / "merged")
    assert len(notes) == 1 and f"adapter trained with {named}" in notes[0] and "full-precision base" in notes[0]
    other = "QLoRA" if method == "oft" else "QOFT"
    assert other not in notes[0]


def test_merge_of_an_adapter_over_a_full_precision_base_has_no_note(tmp_path):
    assert merge("builtin:tiny-qwen2", _adapter(tmp_path / "adapter", "oft", None), tmp_path / "merged") == []
