"""`launch merge`: fold a LoRA adapter (LoRA, rsLoRA, DoRA; PiSSA once converted) into its base,
streaming: the base's safetensors are read one tensor at a time and the merged model is written
one tensor at a time, so merging a model larger than RAM works. Peak memory is about the
largest weight matrix plus the adapter.

The arithmetic is PEFT's own (LoraLayer.get_delta_weight, DoRA's merge_unsafe), in fp32, with a
single cast at the end; the tests compare the tensors with PEFT's merge_and_unload.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from launcher.checkpoint.paths import require_empty_dir
from launcher.checkpoint.safetensors_stream import SAFETENSORS_DTYPES, write_shards

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEFT_PREFIX = "base_model.model."
STORED_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}
LORA_KEY = re.compile(r"^(?P<module>.+)\.(?:(?P<part>lora_A|lora_B)\.weight|(?P<dora>lora_magnitude_vector))$")


class MergeError(ValueError):
    """An adapter or base that cannot be merged; the message says why and what to do."""


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name's dotted suffix."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _check_adapter(config: dict, adapter: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise MergeError(f"{adapter} is a {config.get('peft_type')} adapter: only LoRA-family adapters fold into the "
                         "weights. Fix: use it unmerged (`launch chat --adapter`, PeftModel.from_pretrained)")
    if str(config.get("init_lora_weights")).lower().startswith("pissa"):
        raise MergeError(f"{adapter} is a PiSSA adapter still expressed over the residual base it trained on. Fix: merge "
                         "the run's final adapter (output.dir), which the launcher converts to plain LoRA")
    if config.get("lora_bias"):
        raise MergeError(f"{adapter} trains LoRA biases (lora_bias), which merge does not fold yet")


def _base_files(base_dir: Path) -> list[Path]:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        return [base_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = base_dir / "model.safetensors"
    if not single.is_file():
        raise MergeError(f"base {base_dir} has no model.safetensors(.index.json). Fix: pass a base saved as safetensors "
                         "(AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir))")
    return [single]


def _base_folder(base: str) -> Path:
    """A local folder as is; a hub id through the hub cache (downloaded if missing), files only, no model built."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.py", "tokenizer*"]))
    except Exception as err:  # offline, unknown repo, no access: one line, not a hub traceback
        raise MergeError(f"base {base!r} is neither a folder nor a reachable hub model ({type(err).__name__}). "
                         "Fix: pass the base model's local folder") from None


def qlora_note(adapter: Path) -> str | None:
    """If the run that trained `adapter` used a k-bit base (its plan.json says so), the sentence to print."""
    for plan_file in (adapter / "plan.json", adapter.parent / "plan.json"):
        if plan_file.is_file():
            quant = json.loads(plan_file.read_text())["recipe"]["model"].get("quantization")
            if quant:
                return (f"adapter trained with QLoRA over a {quant['bits']}-bit base: merged into the full-precision "
                        "base, so the merged model is the adapter over the unquantized weights")
    return None


class LoraDeltas:
    """The adapter's tensors grouped per base weight, and PEFT's merge formula for them."""

    def __init__(self, adapter: Path, config: dict):
        from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS
        from safetensors.torch import load_file

        self.config = config
        self.modules: dict[str, dict[str, torch.Tensor]] = {}
        self.replaced: dict[str, torch.Tensor] = {}  # modules_to_save: fully trained copies
        for key, tensor in load_file(adapter / ADAPTER_WEIGHTS).items():
            name = key.removeprefix(PEFT_PREFIX)
            if match := LORA_KEY.match(name):
                self.modules.setdefault(match["module"] + ".weight", {})[match["part"] or match["dora"]] = tensor.float()
            elif any(re.search(rf"(^|\.){re.escape(m)}\.[^.]+$", name) for m in config.get("modules_to_save") or ()):
                self.replaced[name] = tensor  # a fully trained copy (additional_target) replaces the base tensor
            else:
                raise MergeError(f"{adapter}: adapter tensor {key!r} is of a kind merge does not fold "
                                 "(e.g. LoRA on embeddings). Fix: use the adapter unmerged")

    def targets(self) -> set[str]:
        return set(self.modules) | set(self.replaced)

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The merged fp32 value of base tensor `name`."""
        if name in self.replaced:
            return self.replaced[name].float()
        parts = self.modules.get(name)
        if parts is None:
            return weight
        module = name.removesuffix(".weight")
        rank = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        scaling = alpha / rank ** 0.5 if self.config.get("use_rslora") else alpha / rank
        fan_in_fan_out = self.config.get("fan_in_fan_out", False)
        delta = parts["lora_B"] @ parts["lora_A"] * scaling  # in the (out, in) orientation of B @ A
        oriented = delta.T if fan_in_fan_out else delta  # ... and in the stored weight's orientation
        if "lora_magnitude_vector" not in parts:
            return weight + oriented
        # DoRA: rescale each output row of W + delta to the learnt magnitude (PEFT's merge_unsafe)
        norm = torch.linalg.norm((weight.T if fan_in_fan_out else weight) + delta, dim=1)
        factor = (parts["lora_magnitude_vector"] / norm).view(-1, 1)
        return (factor.T if fan_in_fan_out else factor) * (weight + oriented)


def merge(base: str, adapter: str | Path, out: str | Path, dtype: str = "fp32", shard_size: str = "5GB") -> list[str]:
    """base + adapter -> `out`: sharded safetensors, config, generation config, tokenizer (with chat
    template). Returns notes for the user (QLoRA)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from launcher.builtin import local_model_path

    adapter, out = Path(adapter), Path(out)
    require_empty_dir(out)
    base_dir = _base_folder(local_model_path(base))
    config = json.loads((base_dir / "config.json").read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise MergeError(f"base {base} is quantized ({method}): its weights are stored as packed low-bit blocks, and "
                         "adding a LoRA update to them would either be rounded away or produce a model no loader reads. "
                         "Fix: pass the full-precision base model the quantized one was made from")
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    _check_adapter(adapter_config, adapter)
    deltas = LoraDeltas(adapter, adapter_config)
    target = DTYPES[dtype]

    entries, seen = [], set()
    for path in _base_files(base_dir):
        with safe_open(str(path), framework="pt") as handle:
            layout = {name: handle.get_slice(name) for name in handle.keys()}
            layout = {name: (STORED_DTYPES[s.get_dtype()], torch.Size(s.get_shape())) for name, s in layout.items()}
        for name, (stored, shape) in layout.items():

            def produce(path=path, name=name, floating=stored.is_floating_point):
                # a fresh mapping per tensor: pages of tensors already written leave memory with it
                with safe_open(str(path), framework="pt") as handle:
                    tensor = handle.get_tensor(name)
                return deltas.apply(name, tensor.float()).to(target) if floating else tensor

            entries.append((name, shape, target if stored.is_floating_point else stored, produce))
            seen.add(name)
    missing = deltas.targets() - seen
    if missing:
        raise MergeError(f"adapter {adapter} adapts weights the base {base} does not have ({sorted(missing)[:3]}...). "
                         "Fix: pass the base model the adapter was trained on")
    out.mkdir(parents=True, exist_ok=True)
    write_shards(entries, out, shard_size)

    config["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for extra in ["generation_config.json", *(p.name for p in base_dir.glob("*.py"))]:
        if (base_dir / extra).is_file():
            shutil.copy2(base_dir / extra, out / extra)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base_dir
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(out)
    note = qlora_note(adapter)
    return [note] if note else []
