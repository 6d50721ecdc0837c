"""`launch consolidate`: a ZeRO-2/3 checkpoint -> PEFT adapter or HF model dir, offline on CPU, streaming
(an FSDP2 checkpoint: consolidate_dcp.py).

DeepSpeed keeps the fp32 master weights as flat per-rank partitions inside each rank's
optimizer file, next to the Adam moments (2x more). Its zero_to_fp32 reader concatenates them
and builds the whole state dict before saving. Here every rank file is opened memory-mapped
(torch.load(mmap=True, weights_only=True)): only the bytes of the fp32 partitions are ever read,
each output tensor is cut out of them and written straight into its safetensors shard, and the
files are reopened every WINDOW_BYTES so that pages already read leave memory. Peak memory is
about one output tensor plus one window, whatever the model's size.

The layout rules (ZeRO-2: one flat vector per param group split evenly across ranks, params back
to back; ZeRO-3: every param split into ceil(numel/world) pieces, one per rank) are those of
DeepSpeed's zero_to_fp32, which the tests use as the bitwise oracle.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from launcher.checkpoint.consolidate_dcp import consolidate_dcp, is_fsdp_checkpoint
from launcher.checkpoint.inputs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, carry_base_loading, load_torch, read_json
from launcher.checkpoint.paths import POLICY_PREFIX, VALUE_HEAD, VALUE_HEAD_PREFIX
from launcher.checkpoint.safetensors_stream import parse_size, write_shards
from launcher.checkpoint.staging import staged_output
from launcher.errors import ConsolidateError
from launcher.util.output_file import check_output_folder

ADAPTER_NAME = "default"
COPIED_FILES = (
    ADAPTER_CONFIG,
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
WINDOW_BYTES = 64 << 20  # reopen the rank files after reading this much: drops the mapped pages already used
# classes DeepSpeed pickles into its optimizer files; none holds a tensor we need
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)


class _Opaque:
    """Stands in for a DeepSpeed class while unpickling with weights_only=True (no deepspeed import)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _load(path: Path, *keys: str) -> dict:
    """A DeepSpeed model or optimizer file (memory-mapped), checked to hold `keys`."""
    state = load_torch(path, [(_Opaque, name) for name in DEEPSPEED_GLOBALS])
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise ConsolidateError(
            f"{path} holds no {missing[0]!r}: not the DeepSpeed file its name says. "
            "Fix: consolidate a complete checkpoint-<step> folder as the run wrote it"
        )
    return state


def _optimizer_state(path: Path) -> dict:
    return _load(path, "optimizer_state_dict")["optimizer_state_dict"]


def _rank_files(step_dir: Path, suffix: str, world: int | None = None) -> list[Path]:
    """Every rank's *zero_pp_rank_<r>_*<suffix> file, in rank order; with `world`, one per rank or
    ConsolidateError naming the missing ones."""
    files = {
        int(m[1]): p
        for p in step_dir.glob(f"*zero_pp_rank_*{suffix}")
        if (m := re.search(r"zero_pp_rank_(\d+)_", p.name))
    }
    named = next(iter(files.values()), Path(f"zero_pp_rank_0_mp_rank_00{suffix}")).name  # a present rank's name
    missing = [re.sub(r"zero_pp_rank_\d+_", f"zero_pp_rank_{r}_", named) for r in range(world or 0) if r not in files]
    if world is not None and (missing or len(files) != world):
        raise ConsolidateError(
            f"{step_dir} should hold {world} *{suffix} files, one per rank, and holds {len(files)}"
            f"{' (missing: ' + ', '.join(missing) + ')' if missing else ''}: the checkpoint is "
            "incomplete. Fix: copy the missing files, or consolidate another complete checkpoint"
        )
    return [files[r] for r in sorted(files)]


def zero_tag(checkpoint: Path) -> str:
    """The global_step folder DeepSpeed wrote in this checkpoint (from its `latest` file)."""
    latest = checkpoint / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
    else:
        tags = sorted(p.name for p in checkpoint.glob("global_step*") if p.is_dir())
        if not tags:
            raise ConsolidateError(
                f"{checkpoint} holds no DeepSpeed ZeRO shards (no `latest` file, no global_step* "
                "folder). Fix: pass an output.dir/checkpoint-<step> folder of a DeepSpeed run"
            )
        tag = tags[-1]
    if not (checkpoint / tag).is_dir():
        raise ConsolidateError(f"{checkpoint}/latest names {tag!r}, which is missing: the checkpoint is incomplete")
    return tag


class RankFiles:
    """Each rank's optimizer file, memory-mapped, reopened every WINDOW_BYTES read."""

    def __init__(self, paths: list[Path], key: str):
        self.paths, self.key, self.read = paths, key, 0
        self.groups: list[list[torch.Tensor]] | None = None

    def flat_groups(self, nbytes: int) -> list[list[torch.Tensor]]:
        """Per rank, the fp32 flat partitions of every param group; `nbytes` are about to be read."""
        if self.groups is None or self.read + nbytes > WINDOW_BYTES:
            self.groups = None  # unmap first
            self.groups = [_optimizer_state(path)[self.key] for path in self.paths]
            self.read = 0
        self.read += nbytes
        return self.groups


@dataclass
class ZeroCheckpoint:
    """What the model and optimizer files say about the layout of the fp32 weights."""

    stage: int
    world: int
    param_shapes: list[dict[str, torch.Size]]  # per param group, in flat order
    paddings: list[list[int]] | None  # ZeRO-2 alignment padding after each param
    buffers: dict[str, torch.Tensor]
    frozen: dict[str, list[torch.Tensor]]  # name -> fragments (one per rank under ZeRO-3)
    frozen_shapes: dict[str, torch.Size]
    shared: dict[str, str]  # alias -> name
    files: RankFiles = field(repr=False)


def read_layout(step_dir: Path) -> ZeroCheckpoint:
    """The layout of a global_step folder; tensors stay on disk (memory-mapped) until produced."""
    optim_files = _rank_files(step_dir, "_optim_states.pt")
    if not optim_files:
        raise ConsolidateError(
            f"{step_dir} holds no *_optim_states.pt files: not a ZeRO checkpoint "
            "(or saved without optimizer state). Fix: consolidate a checkpoint of a ZeRO-1/2/3 run"
        )
    first = _optimizer_state(optim_files[0])
    stage = 3 if "fp32_flat_groups" in first else 2
    count = first["partition_count"]
    world = max(count) if isinstance(count, list) else count
    optim_files = _rank_files(step_dir, "_optim_states.pt", world)
    model_files = (
        _rank_files(step_dir, "_model_states.pt", world) if stage == 3 else [step_dir / "mp_rank_00_model_states.pt"]
    )
    models = [_load(path, "module", "buffer_names", "param_shapes", "shared_params") for path in model_files]
    head = models[0]
    buffers = {
        k: v.float() if v.is_floating_point() else v.clone()
        for k, v in head["module"].items()
        if k in head["buffer_names"]
    }
    frozen_shapes = head.get("frozen_param_shapes") or {}
    frozen = {name: [m["frozen_param_fragments"][name] for m in models] for name in frozen_shapes}
    return ZeroCheckpoint(
        stage=stage,
        world=world,
        param_shapes=head["param_shapes"],
        paddings=first.get("param_alignment_paddings"),
        buffers=buffers,
        frozen=frozen,
        frozen_shapes=frozen_shapes,
        shared=dict(head["shared_params"]),
        files=RankFiles(optim_files, "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"),
    )


def _cut(pieces: list[torch.Tensor], start: int, length: int) -> list[torch.Tensor]:
    """Slices of the concatenation of `pieces` covering [start, start + length), without concatenating."""
    out, base = [], 0
    for piece in pieces:
        lo, hi = max(start - base, 0), min(start + length - base, piece.numel())
        if lo < hi:
            out.append(piece[lo:hi])
        base += piece.numel()
    return out


def trainable_tensors(ckpt: ZeroCheckpoint):
    """(name, shape, producer) of every trainable parameter, in the flat order DeepSpeed saved them."""
    if ckpt.stage == 3:
        shapes = {k: v for group in ckpt.param_shapes for k, v in group.items()}
        offset = 0
        for name, shape in shapes.items():
            numel = shape.numel()
            part = math.ceil(numel / ckpt.world)

            def gather(offset=offset, part=part, numel=numel, shape=shape):
                ranks = ckpt.files.flat_groups(4 * part * ckpt.world)
                pieces = [s for groups in ranks for s in _cut(groups, offset, part)]
                return torch.cat(pieces)[:numel].view(shape)

            yield name, shape, gather
            offset += part
        return
    for group, shapes in enumerate(ckpt.param_shapes):
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = shape.numel()

            def produce(group=group, offset=offset, numel=numel, shape=shape):
                ranks = ckpt.files.flat_groups(4 * numel)
                return torch.cat(_cut([groups[group] for groups in ranks], offset, numel)).view(shape)

            yield name, shape, produce
            offset += numel + (ckpt.paddings[group][index] if ckpt.paddings else 0)


def _held(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The producer of a tensor the checkpoint holds whole (a buffer)."""
    return lambda: tensor


def _joined(fragments: list[torch.Tensor], shape: torch.Size) -> Callable[[], torch.Tensor]:
    """The producer of a frozen parameter from its saved fragments."""
    return lambda: torch.cat(fragments)[: shape.numel()].view(shape)


def state_tensors(ckpt: ZeroCheckpoint, include_frozen: bool):
    """(name, shape, dtype, producer) of everything zero_to_fp32 would return: buffers, frozen
    params (if asked), trainable params, then shared-param aliases."""
    entries: list[tuple[str, Any, Any, Callable[[], torch.Tensor]]] = [
        (name, t.shape, t.dtype, _held(t)) for name, t in ckpt.buffers.items()
    ]
    if include_frozen:
        for name, shape in ckpt.frozen_shapes.items():
            fragments = ckpt.frozen[name]
            entries.append(
                (
                    name,
                    shape,
                    fragments[0].dtype,  # as saved, like zero_to_fp32
                    _joined(fragments, shape),
                )
            )
    entries += [(name, shape, torch.float32, produce) for name, shape, produce in trainable_tensors(ckpt)]
    by_name = {name: entry for name, *entry in entries}
    entries += [(alias, *by_name[name]) for alias, name in ckpt.shared.items() if name in by_name]
    return entries


def peft_state(named: dict[str, torch.Tensor], adapter_config: dict) -> dict[str, torch.Tensor]:
    """Trainer-side adapter parameters -> what PEFT writes into adapter_model.safetensors."""
    if adapter_config.get("peft_type") == "PREFIX_TUNING":
        # PEFT saves the prefix itself, i.e. the prompt encoder's output for the virtual tokens
        from peft import PrefixTuningConfig
        from peft.tuners.prefix_tuning import PrefixEncoder

        fields = {k: v for k, v in adapter_config.items() if k in PrefixTuningConfig.__dataclass_fields__}
        config = PrefixTuningConfig(**{**fields, "inference_mode": False})  # training shape: the MLP, if any
        encoder = PrefixEncoder(config)
        prefix = f"prompt_encoder.{ADAPTER_NAME}."
        encoder.load_state_dict({k.removeprefix(prefix): v for k, v in named.items()})
        tokens = torch.arange(config.num_virtual_tokens).unsqueeze(0)
        with torch.no_grad():
            return {"prompt_embeddings": encoder(tokens)[0].detach().contiguous()}
    return {name.replace(f".{ADAPTER_NAME}.", "."): tensor.contiguous() for name, tensor in named.items()}


def consolidate(checkpoint: str | Path, out: str | Path, max_shard_size: str = "5GB") -> Path:
    """Write the consolidated adapter (adapter runs) or model (full/freeze runs) of `checkpoint` into
    `out`, which appears only once complete (written as a staging folder beside it, then renamed)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ConsolidateError(f"checkpoint {checkpoint} is not a folder. Fix: pass output.dir/checkpoint-<step>")
    check_output_folder("--out", out, [("the checkpoint", checkpoint)])
    parse_size(max_shard_size)  # a bad --shard-size is refused before any work
    if is_fsdp_checkpoint(checkpoint):  # engine fsdp: sharded DCP
        with staged_output(out) as stage:
            consolidate_dcp(checkpoint, stage, max_shard_size, COPIED_FILES)
            carry_base_loading(checkpoint, stage)
        return Path(out)
    ckpt = read_layout(checkpoint / zero_tag(checkpoint))
    adapter_config = read_json(checkpoint / ADAPTER_CONFIG) if (checkpoint / ADAPTER_CONFIG).is_file() else None
    with staged_output(out) as stage:
        _write(checkpoint, ckpt, adapter_config, stage, max_shard_size)
        carry_base_loading(checkpoint, stage)
    return Path(out)


def _write(checkpoint: Path, ckpt: ZeroCheckpoint, adapter_config: dict | None, out: Path, max_shard_size: str) -> None:
    from safetensors.torch import save_file

    if adapter_config is not None:  # adapters are small: gather, rename to PEFT's keys, save
        named = {name: produce() for name, _, produce in trainable_tensors(ckpt)}
        value_head = {
            k.removeprefix(VALUE_HEAD_PREFIX): t.contiguous()
            for k, t in named.items()
            if k.startswith(VALUE_HEAD_PREFIX)
        }
        if value_head:  # a ppo run: the policy's adapter, and the value head in its own file, as its save writes them
            named = {k.removeprefix(POLICY_PREFIX): t for k, t in named.items() if k.startswith(POLICY_PREFIX)}
            save_file(value_head, str(out / VALUE_HEAD), metadata={"format": "pt"})
        save_file(peft_state(named, adapter_config), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    else:
        write_shards(state_tensors(ckpt, include_frozen=True), out, max_shard_size)
    for name in COPIED_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
