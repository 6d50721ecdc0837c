"""A run's output.dir: kept apart from everything the run reads, claimed with a marker when the
launcher creates it, and replaced (output.overwrite) only as far as a run wrote it.

Torch-free: `launch` checks all of this before any process starts. `check_output_dir` is part of
build_plan, so `launch plan` refuses what `launch train` refuses. The order in `launch train`: the
plan's refusals, the resume checks, then the port and host checks, and only then `start_run`,
which removes the previous run and claims the folder just before the new run starts.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.checkpoint.paths import COMPLETIONS_FILE, LOG_FILE, PISSA_INIT_DIR, PLOT_FILE, STAGING_DIR, VALUE_HEAD
from launcher.errors import RecipeError
from launcher.plan.trackers import TRACKERS
from launcher.recipe.inputs import run_inputs
from launcher.util.paths import overlap, why_unusable

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe

MARKER = ".launcher-run"  # written into output.dir when the launcher creates it; overwrite needs it
MARKER_VERSION = 1
# What a run writes into output.dir (worker/run.py, the Trainer, PEFT and tokenizer saves, monitoring/);
# overwrite removes these and nothing else. A name a run may write must be added here.
RUN_WRITES = (
    MARKER,
    "plan.json",
    "runs",
    *(tracker.folder for tracker in TRACKERS.values()),  # output.report_to's offline trackers
    "logs",
    "checkpoint-*",
    STAGING_DIR,
    PISSA_INIT_DIR,
    VALUE_HEAD,
    LOG_FILE,
    PLOT_FILE,
    COMPLETIONS_FILE,
    "*.tmp",
    ".*.tmp.*",
    "trainer_state.json",
    "training_args.bin",
    "*_results.json",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def written_by_run(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_WRITES)


def is_run_dir(out: Path) -> bool:
    """The folder holds the launcher's marker (it created the folder as a run's output)."""
    try:
        return json.loads((out / MARKER).read_text()).get("version") == MARKER_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(recipe: Recipe, output_dir: str) -> None:
    """What `launch plan` and `launch train` both refuse of an output.dir (build_plan): one beside
    the run's inputs (check_apart), or one this user cannot create or write into (a file, the recipe
    file included)."""
    check_apart(recipe, output_dir)
    why = why_unusable(Path(output_dir))
    if why is not None:
        raise RecipeError(
            f"output.dir = {output_dir!r}: {why}, so the run could not write its files there. "
            "Fix: set output.dir to a folder you can create, e.g. outputs/<run name>"
        )


def check_apart(recipe: Recipe, output_dir: str) -> None:
    """Refuse an output.dir that is, contains or lies inside something the run reads, or that is or
    contains the current folder, the home folder or /: a run writes there and overwrite deletes there."""
    out = Path(output_dir).resolve()  # a symlink is judged by its target
    fix = "Fix: set output.dir to a new folder of its own, e.g. outputs/<run name>"
    for name, root in (
        ("the file system root /", Path("/")),
        ("your home folder", Path.home()),
        ("the current folder", Path.cwd()),
    ):
        relation = overlap(out, root.resolve())
        if relation in ("is", "contains"):
            raise RecipeError(
                f"output.dir = {str(out)!r} {relation} {name}: a run writes its files there and "
                f"output.overwrite would remove them. {fix}"
            )
    resume = recipe["train"]["resume"]
    inputs = run_inputs(recipe)  # not the recipe file: keeping a copy of it in the run's folder is fine
    if resume not in ("auto", "none"):
        inputs.append(("train.resume", Path(resume)))
    for key, path in inputs:
        relation = overlap(out, path.resolve())
        # resuming from a checkpoint inside output.dir is the normal case, unless overwrite would delete it first
        if relation == "contains" and key == "train.resume" and not recipe["output"]["overwrite"]:
            continue
        if relation is not None:
            raise RecipeError(
                f"output.dir = {str(out)!r} {relation} {key} ({str(path)!r}), which the run reads: "
                f"the run's files, and output.overwrite's removal of a previous run, would land on it. {fix}"
            )


def require_run_dir(out: Path) -> None:
    """output.overwrite replaces only a folder the launcher created as a run's output."""
    if not is_run_dir(out):
        raise RecipeError(
            f"output.dir = {str(out)!r} holds files and is not a launcher run (no {MARKER} marker, which "
            "the launcher writes into every output.dir it creates); refusing to delete anything there "
            "even with output.overwrite=true. Fix: choose another output.dir, or delete the folder "
            "yourself if it is an old run you no longer need"
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def start_run(output_dir: str, replace: bool) -> None:
    """Just before the run starts: remove the previous run's files (replace) and claim the folder.

    Only what a run writes goes; anything else in the folder is kept and named. A folder that
    holds a run being resumed keeps its files and its marker (or its lack of one)."""
    out = Path(output_dir)
    if replace:
        kept = sorted(p.name for p in out.iterdir() if not written_by_run(p.name))
        print(f"[launch] output.overwrite=true: removing the previous run in {out}", flush=True)
        for path in out.iterdir():
            if written_by_run(path.name):
                _remove(path)
        if kept:
            print(f"[launch] kept {len(kept)} file(s) there that no run writes: {', '.join(kept)}", flush=True)
    elif out.is_dir() and any(out.iterdir()):
        return  # resuming
    out.mkdir(parents=True, exist_ok=True)
    marker = {"version": MARKER_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / MARKER).write_text(json.dumps(marker) + "\n")
