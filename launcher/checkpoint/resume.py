"""Which checkpoint a run resumes, checked before any rank starts. Torch-free (`launch` runs it).

Resuming hands the checkpoint's pickles (DeepSpeed's *_model_states.pt / *_optim_states.pt) to
torch.load(weights_only=False) on every rank, which runs any code a pickle names. So a resume
loads only a checkpoint whose files all match the manifest this launcher wrote when it published
it (manifest.py: a checksum against damage, not a signature) and whose pickles name only the
classes such checkpoints hold (pickle_check.py), or one the recipe explicitly trusts
(train.trust_checkpoint: true). It also refuses a checkpoint of another recipe or of another
ZeRO stage, offload or engine, and a checkpoint past the recipe's last step; a run whose last
checkpoint and final save are both at its last step is complete (RunComplete).

`launch` records its choice in the plan (`resume_from`); the worker resumes exactly that one,
except after an elastic restart, where it takes the newest checkpoint this run itself published
(`run_id` in the plan and in the manifests).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.checkpoint.manifest import CheckpointDamaged, read_manifests, verify
from launcher.checkpoint.paths import complete_checkpoints, shard_ranks
from launcher.checkpoint.pickle_check import foreign_class, resume_pickles
from launcher.errors import CheckpointError, RecipeError

if TYPE_CHECKING:
    from launcher.plan.types import Plan

# what must equal the recipe's: the manifest's key -> the recipe's; a manifest written before a key was
# recorded is not checked for it
MATCHED = {
    "model": "model.path",
    "stage": "stage",
    "method": "method.name",
    "rank": "method.rank",
    "target": "method.target",
    "world_size": "distributed.nproc_per_node x nnodes",
    "engine": "distributed.engine",
    "zero": "distributed.zero",
    "offload": "distributed.offload",
}
TRUST_FIX = (
    "Fix: resume a checkpoint your own runs wrote, or train.trust_checkpoint=true if you know where this one comes "
    "from (docs/checkpoints.md)"
)


class RunComplete(Exception):
    """The run is at its last step and its final save is there: nothing to do (`launch` exits 0)."""


def run_identity(plan: Plan) -> dict:
    """What a checkpoint's manifest records about the run that wrote it."""
    recipe, world = plan["recipe"], plan["world"]
    method, dist, train = recipe["method"], recipe["distributed"], recipe["train"]
    return {
        "run_id": plan.get("run_id"),
        "model": recipe["model"]["path"],
        "stage": recipe["stage"],
        "method": method["name"],
        "rank": method.get("rank"),
        "target": method.get("target"),
        "world_size": world["world_size"],
        "nnodes": world["nnodes"],
        "nproc_per_node": world["nproc_per_node"],
        "engine": dist["engine"],
        "zero": dist["zero"],
        "offload": dist["offload"],
        "max_steps": train["max_steps"],  # with epochs: the run's end, which trainer_state.json records
        "epochs": train["epochs"],
    }


def _say(line: str) -> None:
    print(line, flush=True)


def _refuse_world_change(checkpoint: Path, plan: Plan) -> None:
    """ZeRO and FSDP2 shards hold 1/world of the optimizer state each; the engine reloads them only into that world."""
    ranks, engine = shard_ranks(checkpoint) or (None, None)
    world = plan["world"]["world_size"]
    if ranks is not None and ranks != world:
        raise RecipeError(
            f"train.resume: {checkpoint} was written by {ranks} ranks ({engine} shards), this plan has {world}: the "
            f"launcher restores a {engine} optimizer state only into the world size that saved it. Fix: resume with "
            f"{ranks} processes (distributed.nproc_per_node x nnodes = {ranks}), or `launch consolidate {checkpoint} "
            "--out DIR` and start a new run from DIR (model.path=DIR for a full run, model.adapter=DIR for a LoRA run; "
            "the optimizer state restarts)"
        )


def _refuse_other_recipe(checkpoint: Path, saved: dict, plan: Plan) -> None:
    ours = run_identity(plan)
    for key in MATCHED:
        if key in saved and saved[key] != ours[key]:
            raise RecipeError(
                f"train.resume: {checkpoint} was written with {MATCHED[key]} = {saved[key]!r}, this recipe has "
                f"{ours[key]!r}: its weights and optimizer state do not fit this run. Fix: "
                f"{MATCHED[key]}={saved[key]!r} to continue that run, or start a new one (train.resume=none with "
                "another output.dir, or output.overwrite=true)"
            )


def _refuse_foreign_pickles(checkpoint: Path) -> None:
    """Every file resume unpickles may name only the classes checkpoints hold (pickle_check.ALLOWED)."""
    try:
        for path in resume_pickles(checkpoint):
            if name := foreign_class(path):
                raise RecipeError(
                    f"train.resume: {path} pickles {name}, which no checkpoint of this launcher holds (the classes "
                    "allowed: launcher/checkpoint/pickle_check.py): resuming hands it to torch.load(weights_only=False) "
                    f"on every rank, which runs what a pickle names. {TRUST_FIX}"
                )
    except CheckpointError as err:
        raise RecipeError(f"train.resume: {err}. {TRUST_FIX}") from None


def _untrusted(checkpoint: Path) -> RecipeError:
    return RecipeError(
        f"train.resume: {checkpoint} has no checksum manifest written by this launcher (launcher-manifest-node0.json), "
        "so nothing shows that its pickled files (*_model_states.pt, *_optim_states.pt, which resuming unpickles "
        "with code execution on every rank) are the ones a run saved. Fix: train.trust_checkpoint=true if you know "
        "where this checkpoint comes from (docs/checkpoints.md), or start a new run"
    )


def check_checkpoint(checkpoint: Path, plan: Plan) -> None:
    """Refuse (RecipeError) a checkpoint that is untrusted, pickles a class no checkpoint holds, or is of another
    recipe, ZeRO stage, offload or engine; CheckpointDamaged if damaged."""
    manifests, trusted = read_manifests(checkpoint), plan["recipe"]["train"]["trust_checkpoint"]
    if manifests:
        verify(checkpoint, manifests, _say)
    elif not trusted:
        raise _untrusted(checkpoint)
    if trusted:
        _say(
            f"[launch] train.trust_checkpoint=true: resuming {checkpoint} without checking what its pickles name"
            + ("" if manifests else " (it has no launcher manifest: unverified)")
        )
    else:
        _refuse_foreign_pickles(checkpoint)
    _refuse_world_change(checkpoint, plan)  # first: it names the shard count and both fixes
    if manifests:
        _refuse_other_recipe(checkpoint, manifests[0]["run"], plan)


def _explicit(resume: str, plan: Plan) -> Path:
    checkpoint = Path(resume)
    if not (checkpoint / "trainer_state.json").is_file():
        raise RecipeError(
            f"train.resume = {resume!r} is not a complete checkpoint (no trainer_state.json). "
            "Fix: point it at an output.dir/checkpoint-<step> folder, or use auto"
        )
    try:
        check_checkpoint(checkpoint, plan)
    except CheckpointDamaged as err:
        raise RecipeError(
            f"train.resume = {resume!r} is damaged: {err}. Fix: resume an intact checkpoint "
            "(train.resume=auto takes the newest intact one), or start a new run"
        ) from None
    return checkpoint


def _newest_intact(plan: Plan) -> Path | None:
    """Newest first; a damaged one is reported and skipped; untrusted or other-recipe ones stop the search."""
    checkpoints = [path for _, path in reversed(complete_checkpoints(plan["output_dir"]))]
    damaged = []
    for checkpoint in checkpoints:
        try:
            check_checkpoint(checkpoint, plan)
        except CheckpointDamaged as err:
            damaged.append(checkpoint.name)
            _say(f"[launch] train.resume=auto: {checkpoint.name} is damaged ({err}); trying the next older checkpoint")
            continue
        if damaged:
            _say(
                f"[launch] train.resume=auto: {', '.join(damaged)} damaged; falling back to {checkpoint.name}, the newest "
                "intact checkpoint"
            )
        return checkpoint
    if damaged:
        raise RecipeError(
            f"train.resume=auto: every checkpoint in output.dir = {plan['output_dir']!r} is damaged "
            f"({', '.join(damaged)}; reasons above). Fix: output.overwrite=true to start again, or "
            "restore a checkpoint from a backup"
        )
    return None


def _trainer_state(folder: Path) -> dict:
    """trainer_state.json of a checkpoint or of output.dir's final save ({} when absent or unreadable)."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _run_end(state: dict, saved: dict, plan: Plan) -> tuple[int | None, str]:
    """The last step of this recipe's run, where it is known before the data is read, and what sets it:
    train.max_steps, or with epochs the end the checkpoint's run computed, if its epochs and max_steps were these."""
    train = plan["recipe"]["train"]
    if train["max_steps"]:
        return train["max_steps"], f"train.max_steps = {train['max_steps']}"
    same_length = saved.get("epochs") == train["epochs"] and "max_steps" in saved and saved["max_steps"] is None
    if same_length and isinstance(state.get("max_steps"), int):
        return state["max_steps"], f"train.epochs = {train['epochs']}: {state['max_steps']} steps"
    return None, ""


def _check_end(checkpoint: Path, plan: Plan) -> None:
    """A checkpoint past the run's last step is refused; at it, with the final save there, the run is complete."""
    state, manifests = _trainer_state(checkpoint), read_manifests(checkpoint)
    step = state.get("global_step")
    end, why = _run_end(state, manifests[0]["run"] if manifests else {}, plan)
    if not isinstance(step, int) or end is None:
        return  # the worker still never steps past the end (callbacks.NoStepPastTheEnd)
    if step > end:
        raise RecipeError(
            f"train.resume: {checkpoint} is at step {step}, past the last step of this recipe ({why}). Fix: "
            f"train.max_steps above {step} to train on from it, or start a new run (train.resume=none with another "
            "output.dir, or output.overwrite=true)"
        )
    out = Path(plan["output_dir"])
    if step == end and _trainer_state(out).get("global_step") == step:  # the final save writes it last
        raise RunComplete(
            f"already complete: output.dir = {str(out)!r} holds this run's final save and {checkpoint.name}, both at "
            f"step {step}, its last ({why}); nothing trained, nothing changed. To train further, raise "
            "train.max_steps (or train.epochs); to start again, output.overwrite=true"
        )


def prepare_resume(plan: Plan) -> Path | None:
    """Choose and check the checkpoint this run resumes (None: a fresh run) and record it in the plan.

    Call before output.dir is touched: a refusal (or RunComplete) leaves everything as it was."""
    plan["run_id"] = uuid.uuid4().hex
    resume, overwrite = plan["recipe"]["train"]["resume"], plan["recipe"]["output"]["overwrite"]
    if resume == "none" or (resume == "auto" and overwrite):  # overwrite: the old run goes, a fresh one starts
        checkpoint = None
    else:
        checkpoint = _newest_intact(plan) if resume == "auto" else _explicit(resume, plan)
    if checkpoint is not None:
        _check_end(checkpoint, plan)
    plan["resume_from"] = str(checkpoint) if checkpoint else None
    return checkpoint


def restart_checkpoint(plan: Plan) -> str | None:
    """After an elastic restart: the newest checkpoint this run published (its manifest's run_id), else the
    one `launch` verified. Sizes and hashes were checked when it was written, moments ago."""
    for _, checkpoint in reversed(complete_checkpoints(plan["output_dir"])):
        try:
            manifests = read_manifests(checkpoint)
        except CheckpointDamaged:
            continue
        if manifests and plan.get("run_id") and manifests[0]["run"].get("run_id") == plan["run_id"]:
            return str(checkpoint)
    return plan.get("resume_from")
