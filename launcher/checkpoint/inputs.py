"""Reading the files `launch consolidate`, `merge` and `chat` take, with one error type.

A truncated shard, a garbage safetensors file or a broken JSON would otherwise surface as a
library's RuntimeError, SafetensorError or JSONDecodeError from deep inside a merge. Every file
is opened here, where its path is known, and a damaged one raises CheckpointError naming the
file and what is wrong with it. CheckpointError is not a ValueError: the CLI prints it as a user
error, while a ValueError from a bug still shows its traceback. Torch is imported only by
load_torch, so the CLI can check inputs before the heavy imports.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import CheckpointError
from launcher.util.json_object import read_json_object

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
INDEX_SUFFIX = ".safetensors.index.json"


def read_json(path: Path) -> dict:
    """The JSON object in `path`; missing, unreadable or not a JSON object: CheckpointError."""
    return read_json_object(path, CheckpointError, "restore it from the run that wrote it, or pass a complete folder")


def safetensors_header(path: Path) -> dict[str, dict]:
    """name -> {dtype, shape, data_offsets} of a safetensors file, checked against the file's size,
    so a truncated or garbage file is refused before any tensor is read."""
    path = Path(path)
    fix = "Fix: restore it (copy it again, or rerun the save that wrote it)"
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if length is None or length > size - 8:
                raise CheckpointError(
                    f"{path} is not a safetensors file or is truncated ({size} bytes, too short for its header). {fix}"
                )
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing. {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path} is not a safetensors file (its header is not JSON): the file is damaged. {fix}"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object). {fix}")
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    try:
        end = max((info["data_offsets"][1] for info in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError):
        raise CheckpointError(f"{path} is not a safetensors file (a header entry lacks data_offsets). {fix}") from None
    if 8 + length + end != size:
        raise CheckpointError(
            f"{path} is truncated or damaged: its header describes {8 + length + end} bytes and "
            f"the file holds {size}. {fix}"
        )
    return tensors


def safetensors_files(folder: Path, prefix: str = "model") -> list[Path] | None:
    """The safetensors files of a saved model: those its index lists (each checked to exist and be
    whole) or the single `<prefix>.safetensors`; None if the folder has neither."""
    index = folder / f"{prefix}{INDEX_SUFFIX}"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map: the index is damaged. Fix: restore it")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"{index} lists {len(files)} shards and {', '.join(missing)} is missing from "
                f"{folder}: the model is incomplete. Fix: copy the missing shards"
            )
    elif (folder / f"{prefix}.safetensors").is_file():
        files = [folder / f"{prefix}.safetensors"]
    else:
        return None
    for path in files:
        safetensors_header(path)
    return files


def run_plan(folder: str | Path) -> dict | None:
    """The plan.json of the run that wrote `folder`: the folder itself (a run's output.dir) or its parent (a
    checkpoint-N inside one); None for a folder no run of ours wrote (a hub model, a plain HF folder)."""
    folder = Path(folder)
    inside = [folder.parent / "plan.json"] if folder.name.startswith("checkpoint-") else []
    for plan in (folder / "plan.json", *inside):
        if folder.is_dir() and plan.is_file():
            return read_json(plan)
    return None


@dataclass(frozen=True)
class BaseLoading:
    """How an adapter's base must be loaded beyond its own config.json, as the run that trained the adapter loaded
    it: the RoPE scaling it set on the config (model.rope_scaling; a full fine-tune's saved config carries it, an
    adapter's files do not) and whether it ran the model's own code."""

    rope_scaling: dict | None = None
    trust_remote_code: bool = False


# written by `launch consolidate --out` beside an adapter whose run scaled RoPE: the out folder has no plan.json
BASE_LOADING = "base_loading.json"


def base_loading(adapter: str | Path | None) -> BaseLoading:
    """The BaseLoading of the run that wrote `adapter` (its plan.json), or of the run a consolidated adapter came
    from (its BASE_LOADING: the RoPE scaling only; running the model's own code stays the caller's choice);
    the base as saved where there is no adapter or no run of ours wrote it."""
    if not adapter:
        return BaseLoading()
    plan = run_plan(adapter)
    if plan is None:
        carried = Path(adapter) / BASE_LOADING
        return BaseLoading(read_json(carried).get("rope_scaling")) if carried.is_file() else BaseLoading()
    return BaseLoading(
        (plan.get("context") or {}).get("rope_scaling"), bool(plan["recipe"]["model"].get("trust_remote_code"))
    )


def carry_base_loading(checkpoint: Path, out: Path) -> None:
    """Beside a consolidated adapter, the RoPE scaling its run set on the base (an adapter's files do not hold
    it; a full model's config.json does), so chat, serve, eval and merge load the base as training did."""
    rope = base_loading(checkpoint).rope_scaling
    if rope is not None and (out / ADAPTER_CONFIG).is_file():
        (out / BASE_LOADING).write_text(json.dumps({"rope_scaling": rope}, indent=1) + "\n")


def adapter_config(adapter: str | Path) -> dict:
    """The config of a PEFT adapter folder, after checking that its weights file is whole."""
    adapter = Path(adapter)
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise CheckpointError(
            f"--adapter {adapter} has no {ADAPTER_CONFIG}: not a PEFT adapter folder. "
            "Fix: pass a run's output.dir or a `launch consolidate` output"
        )
    config = read_json(adapter / ADAPTER_CONFIG)
    safetensors_header(adapter / ADAPTER_WEIGHTS)
    return config


def load_torch(path: Path, safe_globals: Sequence = ()):
    """torch.load(weights_only=True, memory-mapped) of a checkpoint file; missing, truncated or not
    a torch file: CheckpointError."""
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: the checkpoint is incomplete. Fix: consolidate a complete checkpoint-<step> folder"
        ) from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        reason = str(err).split(". ")[0][:120] or type(err).__name__  # torch's first sentence
        raise CheckpointError(
            f"{path} is truncated or damaged: torch.load cannot read it ({reason}). "
            "Fix: restore the file, or consolidate an earlier complete checkpoint-<step>"
        ) from None
