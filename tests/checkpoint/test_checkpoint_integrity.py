"""Resume loads only intact checkpoints this launcher wrote, of this recipe: a damaged newest
checkpoint is named (train.resume: <dir>) or skipped for the newest intact one (auto), a checkpoint
of another recipe, ZeRO stage, offload or engine is refused, and a planted malicious pickle never
runs, even under a manifest recomputed over it, unless the recipe says train.trust_checkpoint: true.
Every refusal comes from `launch` before any rank starts or any file is written. Copies of the
session's ZeRO-3 LoRA run are damaged; the session's real checkpoints of every kind pass the pickle check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from launcher.checkpoint.manifest import read_manifests, verify, write_manifest
from launcher.checkpoint.pickle_check import foreign_class, resume_pickles
from launcher.checkpoint.resume import check_checkpoint
from launcher.errors import RecipeError
from launcher.model.builtin import materialize
from tests.checkpoint.test_resume import _assert_same_run
from tests.conftest import FULL_ZERO2_RUN, LORA_ZERO3_RUN, SHORT_RUN, free_port, run_launch

pytestmark = pytest.mark.multiproc

STEP6 = Path("checkpoint-6")
MODEL_STATES = STEP6 / "global_step6" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES = STEP6 / "global_step6" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"


class Planted:
    """Unpickling this runs `touch MARKER`: what a planted *_model_states.pt can do on every rank."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    torch.save(Planted(marker), path)


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the finished 6-step run (checkpoints 3 and 6), free to damage."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run(*LORA_ZERO3_RUN), out)
    return out


def _launch(out: Path, *overrides: str):
    return run_launch(
        [
            "recipes/sft_tiny.yaml",
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            *LORA_ZERO3_RUN,
            *overrides,
        ]
    )


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    "damage,problem", [(_flip_a_byte, "does not match its sha256"), (_truncate, "bytes, the manifest says")]
)
def test_damaged_checkpoint_is_named_before_launch(run_copy, damage, problem):
    damage(run_copy / OPTIM_STATES)
    before = _listing(run_copy)
    proc = _launch(run_copy, f"train.resume={run_copy / STEP6}")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert str(run_copy / OPTIM_STATES) in proc.stderr and problem in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _listing(run_copy) == before, "nothing may start or change before the refusal"


def test_auto_skips_a_planted_pickle_for_the_newest_intact_checkpoint(run_copy, tiny_run, tmp_path):
    """The old resume loaded checkpoint-6's pickles and ran the planted one on rank 0; now auto says
    checkpoint-6 is damaged, resumes checkpoint-3, and ends where an uninterrupted run ends."""
    marker = tmp_path / "pwned"
    _plant(run_copy / MODEL_STATES, marker)
    proc = _launch(run_copy)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"checkpoint-6 is damaged ({run_copy / MODEL_STATES} has" in proc.stdout  # its size differs
    assert "falling back to checkpoint-3, the newest intact checkpoint" in proc.stdout
    assert f"resuming from {run_copy / 'checkpoint-3'}" in proc.stdout
    assert not marker.exists(), "the planted pickle ran"
    _assert_same_run(run_copy, tiny_run(*LORA_ZERO3_RUN), "adapter_model.safetensors")
    verify(run_copy / STEP6, read_manifests(run_copy / STEP6), say=lambda line: None)  # republished, intact


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("method.rank=4",), "method.rank"),
        (("method.target=[q_proj]",), "method.target"),
        (("method={name: full}",), "method.name"),
        (("model.path",), "model.path"),
        # what DeepSpeed would trip on inside the ranks: another ZeRO stage, offload or engine
        (("distributed.zero=2",), "distributed.zero = 3"),
        (("distributed.offload=optimizer",), "distributed.offload = 'none'"),
        (("distributed.engine=ddp", "distributed.zero=0"), "distributed.engine = 'deepspeed'"),
    ],
)
def test_checkpoint_of_another_recipe_is_refused_before_launch(run_copy, overrides, key):
    if overrides == ("model.path",):  # another model folder (the same weights, as a local dir)
        overrides = (f"model.path={materialize('builtin:tiny-qwen2')}",)
    before, plan_json = _listing(run_copy), (run_copy / "plan.json").read_bytes()
    proc = _launch(run_copy, *overrides)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{run_copy / STEP6} was written with {key}" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and _listing(run_copy) == before
    assert (run_copy / "plan.json").read_bytes() == plan_json, "a refused launch rewrote plan.json"


def _plan(run: Path, **train) -> dict:
    """The plan the run was started with (its output.dir/plan.json), train.* keys replaced."""
    plan = json.loads((run / "plan.json").read_text())
    plan["recipe"]["train"].update(train)
    return plan


def test_manifest_of_an_older_launcher_without_the_engine_keys_still_resumes(run_copy):
    """Manifests written before the engine, ZeRO stage and offload were recorded are not checked for them."""
    checkpoint = run_copy / STEP6
    plan = _plan(run_copy)
    plan["recipe"]["distributed"]["zero"] = 2
    with pytest.raises(RecipeError, match="was written with distributed.zero = 3"):
        check_checkpoint(checkpoint, plan)
    path = checkpoint / "launcher-manifest-node0.json"
    manifest = json.loads(path.read_text())
    for key in ("engine", "zero", "offload", "max_steps", "epochs"):
        del manifest["run"][key]
    path.write_text(json.dumps(manifest))
    check_checkpoint(checkpoint, plan)


@pytest.mark.parametrize("planted", [MODEL_STATES, OPTIM_STATES], ids=["model_states", "optim_states"])
def test_planted_pickle_under_a_recomputed_manifest_is_refused_naming_file_and_class(run_copy, tmp_path, planted):
    """Whoever can write the run folder plants a pickle and rewrites the manifest with the launcher's own
    writer: the manifest matches, and the check of what the pickles name refuses it before any rank starts."""
    checkpoint, marker = run_copy / STEP6, tmp_path / "pwned"
    _plant(run_copy / planted, marker)
    write_manifest(checkpoint, 0, [0], read_manifests(checkpoint)[0]["run"])
    verify(checkpoint, read_manifests(checkpoint), say=lambda line: None)  # the forgery is intact
    before = _listing(run_copy)
    proc = _launch(run_copy)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{run_copy / planted} pickles posix.system" in proc.stderr
    assert "train.trust_checkpoint=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists(), "the planted pickle ran"
    assert _listing(run_copy) == before
    check_checkpoint(checkpoint, _plan(run_copy, trust_checkpoint=True))  # the explicit way out passes the check
    assert not marker.exists()


# the session's runs (conftest's tiny_run), each shared with the files named: LoRA and full, ZeRO-2 and -3
SESSION_RUNS = {
    "lora-zero3": LORA_ZERO3_RUN,  # this file, test_checkpoint.py, test_chat_*.py
    "full-zero2": FULL_ZERO2_RUN,  # test_resume.py, test_checkpoint.py, test_damaged_inputs.py
    "lora-zero2": ("distributed.zero=2", *SHORT_RUN),  # test_e2e.py
    "full-zero3": ("distributed.zero=3", *SHORT_RUN, "method={name: full}"),  # test_resume.py
}


@pytest.mark.parametrize("run", SESSION_RUNS.values(), ids=SESSION_RUNS.keys())
def test_real_checkpoints_pass_the_pickle_check(tiny_run, run):
    for checkpoint in sorted(tiny_run(*run).glob("checkpoint-*")):
        files = {str(path.relative_to(checkpoint)): foreign_class(path) for path in resume_pickles(checkpoint)}
        assert files == dict.fromkeys(files), files
        names = " ".join(files)
        assert "optim_states.pt" in names and "model_states.pt" in names and "rng_state_1.pth" in names


def test_checkpoint_without_a_launcher_manifest_needs_trust(run_copy, tmp_path):
    """A checkpoint from elsewhere (no manifest) with a planted pickle: refused, the pickle never runs;
    train.trust_checkpoint=true hands it to DeepSpeed, and the pickle does run: the refusal is what saved us."""
    checkpoint, marker = run_copy / STEP6, tmp_path / "pwned"
    for manifest in checkpoint.glob("launcher-manifest-node*.json"):
        manifest.unlink()
    _plant(run_copy / MODEL_STATES, marker)
    fresh = tmp_path / "fresh"
    proc = _launch(fresh, f"train.resume={checkpoint}")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{checkpoint} has no checksum manifest" in proc.stderr and "train.trust_checkpoint=true" in proc.stderr
    assert not marker.exists() and not fresh.exists()

    trusted = _launch(fresh, f"train.resume={checkpoint}", "train.trust_checkpoint=true")
    assert "resuming" in trusted.stdout and "no launcher manifest: unverified" in trusted.stdout
    assert marker.exists(), "with trust the checkpoint is loaded as before (the planted pickle runs)"
    assert trusted.returncode != 0
