"""`launch merge`: fold a LoRA adapter (LoRA, rsLoRA, DoRA; PiSSA once converted) or an OFT adapter into its base,
streaming: the base's safetensors are read one tensor at a time and the merged model is written
one tensor at a time, so merging a model larger than RAM works. Peak memory is about the
largest weight matrix plus the adapter.

The arithmetic is PEFT's own (LoraLayer.get_delta_weight, DoRA's merge_unsafe; OFT's rotation built by
PEFT's OFTRotationModule), in fp32, with a single cast at the end; the tests compare the tensors with PEFT's
merge_and_unload.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch

from launcher.checkpoint.inputs import (
    ADAPTER_WEIGHTS,
    adapter_config,
    base_loading,
    read_json,
    run_plan,
    safetensors_files,
    safetensors_header,
)
from launcher.checkpoint.safetensors_stream import SAFETENSORS_DTYPES, parse_size, write_shards
from launcher.checkpoint.staging import staged_output
from launcher.errors import MergeError
from launcher.model.dtypes import torch_dtype
from launcher.model.hub import model_folder
from launcher.util.output_file import check_output_folder

PEFT_PREFIX = "base_model.model."
STORED_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name's dotted suffix."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _check_adapter(config: dict, adapter: Path) -> None:
    if config.get("peft_type") not in ADAPTER_UPDATES:
        raise MergeError(
            f"{adapter} is a {config.get('peft_type')} adapter: only LoRA-family and OFT adapters fold into the "
            "weights. Fix: use it unmerged (`launch chat --adapter`, PeftModel.from_pretrained)"
        )
    if config.get("task_type") == "SEQ_CLS":
        raise MergeError(
            f"{adapter} is a reward model's adapter (stage rm: an adapter plus a new score head in place of the "
            "language-model head); folded into the causal-LM base it would be no reward model, and the base has "
            "no score head to take it. Fix: use it unmerged: train.reward_model of a stage: ppo recipe reads the "
            "rm run's output.dir as it is"
        )
    if str(config.get("init_lora_weights")).lower().startswith("pissa"):
        raise MergeError(
            f"{adapter} is a PiSSA adapter still expressed over the residual base it trained on. Fix: merge "
            "the run's final adapter (output.dir), which the launcher converts to plain LoRA"
        )
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        raise MergeError(f"{adapter} trains biases (lora_bias, bias), which merge does not fold yet")


def base_layout(base_dir: Path) -> dict[str, tuple[Path, torch.dtype, torch.Size]]:
    """name -> (file, stored dtype, shape) of every tensor of the base, from the safetensors headers."""
    files = safetensors_files(base_dir)
    if files is None:
        raise MergeError(
            f"base {base_dir} has no model.safetensors(.index.json). Fix: pass a base saved as safetensors "
            "(AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir))"
        )
    layout = {}
    for path in files:
        for name, info in safetensors_header(path).items():
            if info.get("dtype") not in STORED_DTYPES:
                raise MergeError(
                    f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}, which merge does not read. "
                    "Fix: pass a base stored in F32, F16 or BF16"
                )
            layout[name] = (path, STORED_DTYPES[info["dtype"]], torch.Size(info["shape"]))
    return layout


def base_folder(base: str) -> Path:
    """A local folder as is; a hub id through the hub cache (downloaded if missing), files only, no model built."""
    if Path(base).is_dir():
        return Path(base)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.py", "tokenizer*"])
        )
    except Exception as err:  # offline, unknown repo, no access: one line, not a hub traceback
        raise MergeError(
            f"base {base!r} is neither a folder nor a reachable hub model ({type(err).__name__}). "
            "Fix: pass the base model's local folder"
        ) from None


KBIT_METHODS = {"LORA": "QLoRA", "OFT": "QOFT"}  # an adapter's peft_type over a k-bit base


def kbit_note(adapter: Path, peft_type: str) -> str | None:
    """If the run that trained `adapter` used a k-bit base (its plan.json says so), the sentence to print."""
    plan = run_plan(adapter)
    quant = plan["recipe"]["model"].get("quantization") if plan else None
    if quant:
        return (
            f"adapter trained with {KBIT_METHODS[peft_type]} over a {quant['bits']}-bit base: merged into the "
            "full-precision base, so the merged model is the adapter over the unquantized weights"
        )
    return None


class AdapterUpdate:
    """An adapter's tensors grouped per base weight (`parts`: its tensors by kind), the fully trained copies
    (modules_to_save) that replace base tensors, and the merged value of each base tensor. A subclass gives
    its key pattern (groups `module` and the part's kind), its shape rule and its merge formula."""

    KEY: re.Pattern

    def __init__(self, adapter: Path, config: dict):
        from safetensors.torch import load_file

        self.adapter, self.config = adapter, config
        self.modules: dict[str, dict[str, torch.Tensor]] = {}
        self.replaced: dict[str, torch.Tensor] = {}  # modules_to_save: fully trained copies
        for key, tensor in load_file(adapter / ADAPTER_WEIGHTS).items():
            name = key.removeprefix(PEFT_PREFIX)
            if match := self.KEY.match(name):
                part = next(value for group, value in match.groupdict().items() if group != "module" and value)
                self.modules.setdefault(match["module"] + ".weight", {})[part] = tensor.float()
            elif any(re.search(rf"(^|\.){re.escape(m)}\.[^.]+$", name) for m in config.get("modules_to_save") or ()):
                self.replaced[name] = tensor  # a fully trained copy (additional_target) replaces the base tensor
            else:
                raise MergeError(
                    f"{adapter}: adapter tensor {key!r} is of a kind merge does not fold "
                    "(e.g. an adapter on embeddings). Fix: use the adapter unmerged"
                )

    def misfit(self, name: str, parts: dict[str, torch.Tensor], shape: torch.Size) -> str | None:
        """Why the adapter's parts for base weight `name` (of `shape`) do not fit it, or None."""
        raise NotImplementedError

    def merged(self, name: str, parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """Base weight `name` (fp32) with the adapter's update folded in."""
        raise NotImplementedError

    def check_shapes(self, layout: dict[str, tuple[Path, torch.dtype, torch.Size]]) -> None:
        """Refuse an adapter whose tensors do not fit the base's (another model, or a damaged file)."""
        missing = sorted((set(self.modules) | set(self.replaced)) - set(layout))
        if missing:
            raise MergeError(
                f"adapter {self.adapter} adapts weights the base does not have ({missing[:3]}...). "
                "Fix: pass the base model the adapter was trained on"
            )
        for name, parts in self.modules.items():
            path, _, shape = layout[name]
            why = self.misfit(name, parts, shape)
            if why:
                raise MergeError(
                    f"adapter {self.adapter / ADAPTER_WEIGHTS} does not fit base {path}: {name} is "
                    f"{tuple(shape)} in the base, {why}. Fix: pass the base model the adapter was trained on"
                )
        for name, tensor in self.replaced.items():
            path, _, shape = layout[name]
            if tensor.shape != shape:
                raise MergeError(
                    f"adapter {self.adapter / ADAPTER_WEIGHTS} does not fit base {path}: {name} is "
                    f"{tuple(shape)} in the base and {tuple(tensor.shape)} in the adapter. "
                    "Fix: pass the base model the adapter was trained on"
                )

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The merged fp32 value of base tensor `name`."""
        if name in self.replaced:
            return self.replaced[name].float()
        parts = self.modules.get(name)
        return weight if parts is None else self.merged(name, parts, weight)


class LoraDeltas(AdapterUpdate):
    """LoRA, rsLoRA, DoRA: PEFT's merge formula (LoraLayer.get_delta_weight, DoRA's merge_unsafe)."""

    KEY = re.compile(r"^(?P<module>.+)\.(?:(?P<part>lora_A|lora_B)\.weight|(?P<dora>lora_magnitude_vector))$")

    def misfit(self, name: str, parts: dict[str, torch.Tensor], shape: torch.Size) -> str | None:
        if "lora_A" not in parts or "lora_B" not in parts:
            return "and the adapter has only one of lora_A/lora_B: it is damaged"
        out_features, rank = parts["lora_B"].shape
        expected = (out_features, parts["lora_A"].shape[-1])
        expected = expected[::-1] if self.config.get("fan_in_fan_out") else expected
        magnitude = parts.get("lora_magnitude_vector")
        if (
            rank != parts["lora_A"].shape[0]
            or tuple(shape) != expected
            or (magnitude is not None and magnitude.numel() != out_features)
        ):
            return (
                f"the adapter's update is {expected} (lora_A {tuple(parts['lora_A'].shape)}, "
                f"lora_B {tuple(parts['lora_B'].shape)})"
            )
        return None

    def merged(self, name: str, parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        module = name.removesuffix(".weight")
        rank = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        scaling = alpha / rank**0.5 if self.config.get("use_rslora") else alpha / rank
        fan_in_fan_out = self.config.get("fan_in_fan_out", False)
        delta = parts["lora_B"] @ parts["lora_A"] * scaling  # in the (out, in) orientation of B @ A
        oriented = delta.T if fan_in_fan_out else delta  # ... and in the stored weight's orientation
        if "lora_magnitude_vector" not in parts:
            return weight + oriented
        # DoRA: rescale each output row of W + delta to the learnt magnitude (PEFT's merge_unsafe)
        norm = torch.linalg.norm((weight.T if fan_in_fan_out else weight) + delta, dim=1)
        factor = (parts["lora_magnitude_vector"] / norm).view(-1, 1)
        return (factor.T if fan_in_fan_out else factor) * (weight + oriented)


def _oft_block_size(elements: int) -> int:
    """b of a block whose b(b-1)/2 skew-symmetric entries OFT stores."""
    return (1 + math.isqrt(1 + 8 * elements)) // 2


class OftRotations(AdapterUpdate):
    """OFT: a linear layer's input is rotated by R (block-diagonal orthogonal), so its weight W (out, in)
    becomes W R^T, as PEFT's OFT Linear.merge computes; R is built by PEFT's own OFTRotationModule from the
    stored skew-symmetric parameters (Cayley or Cayley-Neumann, COFT's projection, shared blocks)."""

    KEY = re.compile(r"^(?P<module>.+)\.(?P<rotation>oft_R)\.weight$")

    def misfit(self, name: str, parts: dict[str, torch.Tensor], shape: torch.Size) -> str | None:
        blocks, elements = parts["oft_R"].shape
        size = _oft_block_size(elements)
        if len(shape) != 2 or size * (size - 1) // 2 != elements or shape[1] % size:
            return f"the adapter rotates inputs in {blocks} x {elements}-parameter blocks"
        if blocks * size != shape[1] and not self.config.get("block_share"):
            return f"the adapter's {blocks} blocks of {size} rotate {blocks * size} inputs"
        return None

    def merged(self, name: str, parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        from peft.tuners.oft.layer import OFTRotationModule

        config, stored = self.config, parts["oft_R"]
        size = _oft_block_size(stored.shape[1])
        rotation = OFTRotationModule(
            stored.shape[0],
            stored.shape[1],
            size,
            weight.shape[1],
            coft=config.get("coft", False),
            eps=config.get("eps", 6e-5),
            block_share=config.get("block_share", False),
            use_cayley_neumann=config.get("use_cayley_neumann", True),
            num_cayley_neumann_terms=config.get("num_cayley_neumann_terms", 5),
        )
        with torch.no_grad():
            rotation.weight.copy_(stored)
            return weight @ rotation.get_weight().T


ADAPTER_UPDATES: dict[str, type[AdapterUpdate]] = {"LORA": LoraDeltas, "OFT": OftRotations}


def merge(base: str, adapter: str | Path, out: str | Path, dtype: str = "fp32", shard_size: str = "5GB") -> list[str]:
    """base + adapter -> `out`: sharded safetensors, config, generation config, tokenizer (with chat
    template). `out` appears only once complete (written as a staging folder beside it, then renamed).
    Returns notes for the user (QLoRA, QOFT)."""
    from launcher.model.builtin import local_model_path

    check_output_folder("--out", out, [("--base", model_folder(str(base))), ("--adapter", adapter)])
    adapter = Path(adapter)
    adapter_settings = adapter_config(adapter)
    parse_size(shard_size)  # a bad --shard-size is refused before any work
    base_dir = base_folder(local_model_path(base))
    config = full_precision_config(
        base_dir, base, "adding a LoRA update to them would either be rounded away or produce a model no loader reads"
    )
    _check_adapter(adapter_settings, adapter)
    deltas = ADAPTER_UPDATES[adapter_settings["peft_type"]](adapter, adapter_settings)
    layout = base_layout(base_dir)
    deltas.check_shapes(layout)
    target = torch_dtype(dtype)

    def produce(path: Path, name: str, floating: bool) -> torch.Tensor:
        tensor = read_tensor(path, name)
        return deltas.apply(name, tensor.float()).to(target) if floating else tensor

    entries = [
        (
            name,
            shape,
            target if stored.is_floating_point else stored,
            lambda p=path, n=name, f=stored.is_floating_point: produce(p, n, f),
        )
        for name, (path, stored, shape) in layout.items()
    ]
    config = rope_scaled(config, base_dir, adapter)
    config["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    config.pop("torch_dtype", None)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base_dir
    write_model_folder(out, entries, config, base_dir, tokenizer_source, shard_size)
    note = kbit_note(adapter, adapter_settings["peft_type"])
    return [note] if note else []


def full_precision_config(base_dir: Path, base: str, why: str) -> dict:
    """The base's config.json, refusing a quantized base (`why`: what changing its packed weights would do)."""
    config = read_json(base_dir / "config.json")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise MergeError(
            f"base {base} is quantized ({method}): its weights are stored as packed low-bit blocks, and {why}. "
            "Fix: pass the full-precision base model the quantized one was made from"
        )
    return config


def rope_scaled(config: dict, base_dir: Path, adapter: Path) -> dict:
    """The merged model's config.json: the base's, under the RoPE scaling the adapter's run trained with
    (base_loading), set as the worker set it, so the merged model loads as a full fine-tune's saved config does."""
    base = base_loading(adapter)
    if base.rope_scaling is None:
        return config
    from launcher.model.rope import rope_scaled_config

    scaled = rope_scaled_config(str(base_dir), base.rope_scaling, base.trust_remote_code)
    config = {key: value for key, value in config.items() if key != "rope_scaling"}  # rope_parameters replaces it
    return {
        **config,
        "rope_parameters": scaled.rope_parameters,
        "max_position_embeddings": scaled.max_position_embeddings,
    }


def read_tensor(path: Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file, through a fresh mapping: pages of tensors already written leave memory."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


def write_model_folder(
    out: str | Path, entries: list, config: dict, base_dir: Path, tokenizer_source: Path, shard_size: str
) -> None:
    """A model folder at `out` (staged, renamed once complete): the tensors `entries` produce as sharded
    safetensors, `config`, the base's generation config and code files, the tokenizer (with chat template)."""
    from transformers import AutoTokenizer

    with staged_output(out) as stage:
        write_shards(entries, stage, shard_size)
        (stage / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for extra in ["generation_config.json", *(p.name for p in base_dir.glob("*.py"))]:
            if (base_dir / extra).is_file():
                shutil.copy2(base_dir / extra, stage / extra)
        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(stage)
