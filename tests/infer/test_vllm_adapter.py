"""vLLM takes a plain LoRA adapter over the base as saved: `eval.engine: vllm` and `launch serve --engine vllm`
refuse any other adapter (OFT, prefix tuning, DoRA, one trained under RoPE scaling) with its peft_type and the fix,
before vLLM is imported (it is not installed here) or any model is read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from peft import LoraConfig, OFTConfig, PrefixTuningConfig

from launcher.errors import EvalError, LauncherError, ServeError
from launcher.infer.eval_vllm import choose_engine
from launcher.infer.serve import vllm_command

pytestmark = pytest.mark.unit

ADAPTERS = {
    "lora": LoraConfig(r=8, target_modules=["q_proj"]),
    "dora": LoraConfig(r=8, target_modules=["q_proj"], use_dora=True),
    "oft": OFTConfig(r=0, oft_block_size=4, target_modules=["q_proj"]),
    "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
}


def _adapter(tmp_path: Path, kind: str, rope: dict | None = None) -> str:
    """An adapter folder as PEFT writes its adapter_config.json, with the run's plan.json beside it."""
    folder = tmp_path / kind
    ADAPTERS[kind].save_pretrained(folder)
    plan = {"recipe": {"model": {"trust_remote_code": False}}, "context": {"rope_scaling": rope}}
    (folder / "plan.json").write_text(json.dumps(plan))
    return str(folder)


@pytest.mark.parametrize(
    "kind, named, merge_fix",
    [("oft", "peft_type OFT", True), ("prefix", "peft_type PREFIX_TUNING", False), ("dora", "DoRA", True)],
)
def test_an_adapter_vllm_cannot_take_is_refused_before_vllm_is_imported(tmp_path, kind, named, merge_fix):
    adapter = _adapter(tmp_path, kind)
    with pytest.raises(EvalError) as refused:
        choose_engine("vllm", adapter)
    message = str(refused.value)
    assert named in message and "Fix: eval.engine: hf" in message and adapter in message
    assert ("`launch merge`" in message) == merge_fix
    with pytest.raises(ServeError) as refused:
        vllm_command("builtin:tiny-qwen2", {"tuned": adapter}, "127.0.0.1", 8000, "tiny")
    assert named in str(refused.value) and "Fix: --engine hf" in str(refused.value)
    assert isinstance(refused.value, LauncherError)  # exit 2 from cli.main
    assert choose_engine("auto", adapter) == "hf"  # auto picks the engine that can load it
    assert "vllm" not in sys.modules


def test_a_lora_adapter_trained_under_rope_scaling_is_refused_and_a_plain_one_passes(tmp_path):
    rope = {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 2048}
    scaled = _adapter(tmp_path / "long", "lora", rope)
    with pytest.raises(EvalError, match="RoPE scaling .*`launch merge`"):
        choose_engine("vllm", scaled)
    plain = _adapter(tmp_path, "lora")
    argv = vllm_command("model-dir", {"tuned": plain}, "127.0.0.1", 8000, "tiny")
    assert argv[argv.index("--lora-modules") + 1] == f"tuned={plain}"
