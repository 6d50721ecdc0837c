"""Checkpoint folders: finding complete checkpoints and their world size. Torch-free (the CLI uses
it before any process starts)."""

from __future__ import annotations

import re
from pathlib import Path

from launcher.checkpoint.manifest import MANIFEST_GLOB

STAGING_DIR = "tmp-checkpoints"  # inside output.dir: checkpoints being written (see atomic.py)
# a ppo run's model: the policy (a PEFT model) and a value head beside it (stages/ppo.py)
POLICY_PREFIX, VALUE_HEAD_PREFIX = "policy.", "v_head."
VALUE_HEAD = "value_head.safetensors"  # the value head's file beside the policy adapter
PISSA_INIT_DIR = "pissa_init"  # inside output.dir: the adapter as initialised, needed to convert PiSSA to LoRA
LOG_FILE, PLOT_FILE = "trainer_log.jsonl", "loss.png"  # inside output.dir: the loss history and its plot
COMPLETIONS_FILE = "completions.jsonl"  # inside output.dir: grpo's sampled completions with their rewards


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint-N in output_dir, oldest first.

    A checkpoint-N is complete by construction (written under tmp-checkpoints/ and renamed when
    every rank has finished); it also needs trainer_state.json, written last by the Trainer, so a
    folder from an older, non-atomic run is never trusted half-written, or a launcher manifest
    (a node other than 0 without a shared file system publishes only its own ranks' files).
    """
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and ((path / "trainer_state.json").is_file() or any(path.glob(MANIFEST_GLOB))):
            steps.append((int(suffix), path))
    return sorted(steps)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint-N in output_dir, or None."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def zero_shard_ranks(checkpoint: str | Path) -> int | None:
    """How many data-parallel ranks wrote this checkpoint's ZeRO shards (None: not a ZeRO checkpoint)."""
    checkpoint = Path(checkpoint)
    latest = checkpoint / "latest"
    tag = latest.read_text().strip() if latest.is_file() else None
    folders = [checkpoint / tag] if tag else sorted(checkpoint.glob("global_step*"))
    if not folders or not folders[-1].is_dir():
        return None
    ranks = {
        int(m.group(1))
        for p in folders[-1].glob("*optim_states.pt")
        if (m := re.search(r"zero_pp_rank_(\d+)_", p.name))
    }
    return len(ranks) or None


FSDP_MODEL_DCP = "pytorch_model_fsdp_0"  # the Trainer's sharded FSDP model: DCP files __<rank>_0.distcp + .metadata


def dcp_shard_ranks(checkpoint: str | Path) -> int | None:
    """How many ranks wrote this checkpoint's FSDP model shards (None: not an FSDP checkpoint)."""
    ranks = {
        m.group(1)
        for p in (Path(checkpoint) / FSDP_MODEL_DCP).glob("__*_*.distcp")
        if (m := re.match(r"__(\d+)_", p.name))
    }
    return len(ranks) or None


def shard_ranks(checkpoint: str | Path) -> tuple[int, str] | None:
    """(ranks, which engine's shards) of a checkpoint whose state only the world size that wrote it restores."""
    if ranks := zero_shard_ranks(checkpoint):
        return ranks, "ZeRO"
    if ranks := dcp_shard_ranks(checkpoint):
        return ranks, "FSDP2"
    return None
