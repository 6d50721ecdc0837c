"""Engine fsdp (FSDP2) trained for real on CPU over gloo (issue 25): LoRA and full fine-tuning give the losses
and gradient norms of DeepSpeed's sharded runs and of one process on the same global batch, every parameter
is a DTensor on every rank (a run that fell back to DDP fails), checkpoints are sharded DCP in the same
atomic, checksummed checkpoint-N folders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.conftest import FSDP_LORA_RUN, FULL_ZERO2_RUN, LORA_ZERO3_RUN, SHORT_RUN, run_launch
from tests.worker.test_e2e import _train

pytestmark = pytest.mark.multiproc

FSDP = ("distributed.engine=fsdp",)
FULL = ("method={name: full}", "model.template=alpaca")  # FULL_ZERO2_RUN's, without its ZeRO stage
FSDP_FULL_RUN = (*FSDP, *FULL, *SHORT_RUN)
# the same 16 sequences a step: micro 4 x grad_accum 2 x 2 ranks, or micro 4 x grad_accum 4 in one process
ONE_PROCESS = ("distributed.engine=ddp", "distributed.nproc_per_node=1", "train.grad_accum=4", *SHORT_RUN)


def _steps(out: Path) -> list[tuple[float, float]]:
    """(loss, grad_norm) of every logged step, as the Trainer logged them (averaged over ranks)."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["loss"], entry["grad_norm"]) for entry in history if "grad_norm" in entry]


def _assert_same_steps(got: list, expected: list, what: str) -> None:
    """Equal within 1e-5, relative to the value where it exceeds 1 (fp32 sums in another order: padding differs
    between micro-batches of 4 taken from one rank's or two ranks' share of the batch)."""
    assert len(got) == len(expected) == 6, what
    for step, (values, reference) in enumerate(zip(got, expected), 1):
        close = all(math.isclose(v, r, rel_tol=1e-5, abs_tol=1e-5) for v, r in zip(values, reference))
        assert close, f"{what}, step {step}: (loss, grad_norm) {got} vs {expected}"


def _one_process(tmp_path: Path, name: str, *overrides: str) -> Path:
    out, proc = _train(tmp_path, name, [*overrides, *ONE_PROCESS])
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def test_lora_under_fsdp_equals_zero3_and_one_process(tiny_run, tmp_path):
    fsdp = _steps(tiny_run(*FSDP_LORA_RUN))
    _assert_same_steps(fsdp, _steps(tiny_run(*LORA_ZERO3_RUN)), "FSDP2 vs ZeRO-3")
    _assert_same_steps(fsdp, _steps(_one_process(tmp_path, "one")), "FSDP2 vs one process")


def test_full_fine_tuning_under_fsdp_equals_zero2_and_one_process(tiny_run, tmp_path):
    fsdp = _steps(tiny_run(*FSDP_FULL_RUN))
    _assert_same_steps(fsdp, _steps(tiny_run(*FULL_ZERO2_RUN)), "FSDP2 vs ZeRO-2")
    _assert_same_steps(fsdp, _steps(_one_process(tmp_path, "one", *FULL)), "FSDP2 vs one process")


def test_the_accelerate_launcher_runs_fsdp_like_torchrun(tiny_run, tmp_path):
    out, proc = _train(tmp_path, "accelerate", [*FSDP_LORA_RUN, "distributed.launcher=accelerate"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "fsdp: rank 1 holds" in (out / "logs" / "rank-1.log").read_text()
    _assert_same_steps(_steps(out), _steps(tiny_run(*FSDP_LORA_RUN)), "accelerate vs torchrun")


@pytest.mark.parametrize("run", [FSDP_LORA_RUN, FSDP_FULL_RUN], ids=["lora", "full"])
def test_every_rank_holds_only_its_shard_of_every_parameter(tiny_run, run):
    """The worker stops a run whose parameters are not DTensors (accelerate quietly runs DDP on CPU without
    launcher/compat.py's fsdp_on_cpu); each rank's log says how much of the model it holds."""
    out = tiny_run(*run)
    held = []
    for rank in (0, 1):
        line = re.search(
            r"fsdp: rank (\d) holds ([\d,]+) of ([\d,]+) parameter elements",
            (out / "logs" / f"rank-{rank}.log").read_text(),
        )
        assert line and int(line.group(1)) == rank, f"rank {rank} logged no shard"
        held.append(int(line.group(2).replace(",", "")))
        total = int(line.group(3).replace(",", ""))
    assert sum(held) == total and max(held) < 0.6 * total, held


def test_fsdp_checkpoints_are_sharded_dcp_in_checksummed_folders(tiny_run):
    out = tiny_run(*FSDP_LORA_RUN)
    checkpoint = out / "checkpoint-3"
    manifest = json.loads((checkpoint / "launcher-manifest-node0.json").read_text())
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        names = {f"{folder}/.metadata", f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp"}
        assert names <= set(manifest["files"]), manifest["files"]
    assert not (out / "tmp-checkpoints").exists() or not any((out / "tmp-checkpoints").iterdir())
    # the final save is the gathered adapter, as under DeepSpeed
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("run", "weights"),
    [(FSDP_LORA_RUN, "adapter_model.safetensors"), (FSDP_FULL_RUN, "model.safetensors")],
    ids=["lora", "full"],
)
def test_consolidated_fsdp_checkpoint_equals_the_final_save_and_dcp_to_torch_save(tiny_run, tmp_path, run, weights):
    """checkpoint-6 is the last step: `launch consolidate` gives the run's own final save, tensor for tensor, and
    what torch's dcp_to_torch_save reads from the same shards (LoRA: the PEFT adapter keys, without ".default")."""
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tiny_run(*run)
    proc = run_launch(["consolidate", str(out / "checkpoint-6"), "--out", str(tmp_path / "merged")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, final = load_file(tmp_path / "merged" / weights), load_file(out / weights)
    dcp_to_torch_save(out / "checkpoint-6" / "pytorch_model_fsdp_0", tmp_path / "reference.pt")
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)["model"]
    assert got.keys() == final.keys() and got.keys() <= reference.keys()
    for name, tensor in got.items():
        assert torch.equal(tensor, final[name]) and torch.equal(tensor, reference[name]), name
    assert {p.name for p in out.iterdir()} >= {p.name for p in (tmp_path / "merged").iterdir()}  # its configs too
