"""Writing safetensors shards one tensor at a time.

safetensors' own save_file serialises a whole dict held in memory. Its format is simple and
fixed (8-byte little-endian header length, a JSON header of dtype/shape/byte offsets, then the
raw bytes back to back), and shapes and dtypes are known before any tensor is built, so the
header can be written first and each tensor produced, written and freed in turn: memory stays
at one tensor. The files are read back by safetensors itself in the tests.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from launcher.errors import CheckpointError

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

Entry = tuple[str, torch.Size, torch.dtype, Callable[[], torch.Tensor]]  # name, shape, dtype, producer


def _nbytes(shape: torch.Size, dtype: torch.dtype) -> int:
    return shape.numel() * torch.empty((), dtype=dtype).element_size()


UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as transformers' max_shard_size; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in UNITS | {"": 1}:
        raise CheckpointError(f"--shard-size {text!r} is not a size. Fix: write it like 5GB, 500MB or 2GiB")
    return int(float(match[1]) * UNITS.get(match[2].upper(), 1))


def write_file(entries: list[Entry], path: Path) -> None:
    """One safetensors file from `entries`, each producer called once, in order."""
    header, offset = {}, 0
    for name, shape, dtype, _ in entries:
        size = _nbytes(shape, dtype)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, produce in entries:
            tensor = produce()
            if tensor.shape != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"{name}: produced {tuple(tensor.shape)} {tensor.dtype}, declared {tuple(shape)} {dtype}"
                )
            f.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


def write_shards(entries: Iterable[Entry], out: Path, max_shard_size: str | int, prefix: str = "model") -> list[Path]:
    """HF-style sharded safetensors in `out` (model.safetensors, or model-0000i-of-0000N.safetensors plus
    model.safetensors.index.json), shards cut in order at max_shard_size bytes."""
    limit = parse_size(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = _nbytes(entry[1], entry[2])
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    if len(shards) == 1:
        names = [f"{prefix}.safetensors"]
    else:
        names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        write_file(shard, out / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(_nbytes(e[1], e[2]) for s in shards for e in s)},
            "weight_map": {e[0]: name for name, s in zip(names, shards) for e in s},
        }
        (out / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [out / name for name in names]
