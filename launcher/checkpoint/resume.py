"""Which checkpoint a run resumes, checked before any rank starts. Torch-free (`launch` runs it).

Resuming hands the checkpoint's pickles (DeepSpeed's *_model_states.pt / *_optim_states.pt) to
torch.load(weights_only=False) on every rank, which runs any code a pickle names. So a resume
loads only a checkpoint whose files all match the manifest this launcher wrote when it published
it (manifest.py), or one the recipe explicitly trusts (train.trust_checkpoint: true). The check
also catches damage (a truncated or altered file) and a checkpoint of another recipe.

`launch` records its choice in the plan (`resume_from`); the worker resumes exactly that one,
except after an elastic restart, where it takes the newest checkpoint this run itself published
(`run_id` in the plan and in the manifests).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from launcher.checkpoint.manifest import CheckpointDamaged, read_manifests, verify
from launcher.checkpoint.paths import complete_checkpoints, shard_ranks
from launcher.errors import RecipeError

MATCHED = ("model", "stage", "method", "rank", "target", "world_size")  # what must equal the recipe's


def run_identity(plan: dict) -> dict:
    """What a checkpoint's manifest records about the run that wrote it."""
    recipe, world = plan["recipe"], plan["world"]
    method = recipe["method"]
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
    }


def _say(line: str) -> None:
    print(line, flush=True)


def _refuse_world_change(checkpoint: Path, plan: dict) -> None:
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


def _refuse_other_recipe(checkpoint: Path, saved: dict, plan: dict) -> None:
    ours = run_identity(plan)
    keys = {
        "model": "model.path",
        "stage": "stage",
        "method": "method.name",
        "rank": "method.rank",
        "target": "method.target",
        "world_size": "distributed.nproc_per_node x nnodes",
    }
    for key in MATCHED:
        if key in saved and saved[key] != ours[key]:
            raise RecipeError(
                f"train.resume: {checkpoint} was written with {keys[key]} = {saved[key]!r}, this recipe has "
                f"{ours[key]!r}: its weights and optimizer state do not fit this run. Fix: {keys[key]}={saved[key]!r} "
                "to continue that run, or start a new one (train.resume=none with another output.dir, or "
                "output.overwrite=true)"
            )


def _untrusted(checkpoint: Path) -> RecipeError:
    return RecipeError(
        f"train.resume: {checkpoint} has no checksum manifest written by this launcher (launcher-manifest-node0.json), "
        "so nothing shows that its pickled files (*_model_states.pt, *_optim_states.pt, which resuming unpickles "
        "with code execution on every rank) are the ones a run saved. Fix: train.trust_checkpoint=true if you know "
        "where this checkpoint comes from (docs/checkpoints.md), or start a new run"
    )


def check_checkpoint(checkpoint: Path, plan: dict) -> None:
    """Refuse (RecipeError) a checkpoint that is untrusted or of another recipe; CheckpointDamaged if damaged."""
    manifests = read_manifests(checkpoint)
    if manifests:
        verify(checkpoint, manifests, _say)
    elif plan["recipe"]["train"]["trust_checkpoint"]:
        _say(f"[launch] train.trust_checkpoint=true: resuming {checkpoint}, which has no launcher manifest, unverified")
    else:
        raise _untrusted(checkpoint)
    _refuse_world_change(checkpoint, plan)  # first: it names the shard count and both fixes
    if manifests:
        _refuse_other_recipe(checkpoint, manifests[0]["run"], plan)


def _explicit(resume: str, plan: dict) -> Path:
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


def _newest_intact(plan: dict) -> Path | None:
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


def prepare_resume(plan: dict) -> Path | None:
    """Choose and check the checkpoint this run resumes (None: a fresh run) and record it in the plan.

    Call before output.dir is touched: a refusal leaves everything as it was."""
    plan["run_id"] = uuid.uuid4().hex
    resume, overwrite = plan["recipe"]["train"]["resume"], plan["recipe"]["output"]["overwrite"]
    if resume == "none" or (resume == "auto" and overwrite):  # overwrite: the old run goes, a fresh one starts
        checkpoint = None
    else:
        checkpoint = _newest_intact(plan) if resume == "auto" else _explicit(resume, plan)
    plan["resume_from"] = str(checkpoint) if checkpoint else None
    return checkpoint


def restart_checkpoint(plan: dict) -> str | None:
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
