"""`launch consolidate` of an FSDP2 checkpoint: the Trainer's sharded DCP model (pytorch_model_fsdp_0/: one
__<rank>_0.distcp per rank and a .metadata index) -> PEFT adapter (LoRA) or HF model dir, offline on CPU.

Each tensor is read alone (torch.distributed.checkpoint.load with no_dist, into a tensor of the size the index
records), so peak memory is one tensor whatever the model's size; full models are written shard by shard
(safetensors_stream). The index's keys are the model's state-dict names under "model."; a LoRA run's DCP holds
only the adapter, keyed as PEFT's adapter file keys it. tests/engines/test_fsdp.py checks the result against the run's
own final save and against torch's dcp_to_torch_save."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from launcher.checkpoint.inputs import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from launcher.checkpoint.paths import FSDP_MODEL_DCP
from launcher.checkpoint.safetensors_stream import write_shards
from launcher.errors import ConsolidateError

MODEL_KEY = "model."  # accelerate saves {"model": state_dict}; DCP flattens it


def is_fsdp_checkpoint(checkpoint: Path) -> bool:
    return (checkpoint / FSDP_MODEL_DCP / ".metadata").is_file()


def dcp_entries(dcp_dir: Path) -> list[tuple]:
    """(name, shape, dtype, produce) of every tensor in a DCP folder, each produced by reading only it."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        index = FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
    except Exception as err:  # a damaged .metadata: torch raises whatever its unpickler meets
        raise ConsolidateError(
            f"{dcp_dir}/.metadata cannot be read ({type(err).__name__}: {err}). "
            "Fix: consolidate a complete checkpoint-<step> folder as the run wrote it"
        ) from None

    def reader(key: str, info: TensorStorageMetadata):
        def produce() -> torch.Tensor:
            tensor = torch.empty(info.size, dtype=info.properties.dtype)
            load({key: tensor}, storage_reader=FileSystemReader(str(dcp_dir)), no_dist=True)
            return tensor

        return produce

    return [
        (key.removeprefix(MODEL_KEY), torch.Size(info.size), info.properties.dtype, reader(key, info))
        for key, info in index.items()
        if isinstance(info, TensorStorageMetadata)
    ]


def consolidate_dcp(checkpoint: Path, out: Path, max_shard_size: str, copied: tuple[str, ...]) -> None:
    """Write `checkpoint`'s adapter or model into the (staging) folder `out`."""
    from safetensors.torch import save_file

    entries = dcp_entries(checkpoint / FSDP_MODEL_DCP)
    if (checkpoint / ADAPTER_CONFIG).is_file():  # adapters are small: read whole, saved as PEFT keys them
        save_file({name: produce() for name, _, _, produce in entries}, str(out / ADAPTER_WEIGHTS), {"format": "pt"})
    elif (checkpoint / "config.json").is_file():
        write_shards(entries, out, max_shard_size)
    else:
        raise ConsolidateError(
            f"{checkpoint} has neither {ADAPTER_CONFIG} nor config.json beside its FSDP shards, so it cannot say "
            "what the weights are. Fix: consolidate a checkpoint-<step> folder written by `launch` with engine fsdp"
        )
    for name in copied:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
