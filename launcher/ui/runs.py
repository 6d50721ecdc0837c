"""The runs under the UI's root: every folder holding a plan.json, with the status its files show.

Torch-free; reads only what a run writes (plan.json, trainer_log.jsonl, logs/rank-K.log), so a run
started by the CLI is listed like one started by the page.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from launcher.checkpoint.paths import LOG_FILE, complete_checkpoints
from launcher.errors import STOPPED
from launcher.monitoring.ranklog import TAIL_LINES, failure_report, last_run_text

SKIP = {"logs", "runs", ".git", "node_modules"}  # a run's own subfolders and trees that hold no runs
MAX_DEPTH = 4  # root/outputs/<name> is the usual depth; deeper trees are not scanned


class PathRefused(ValueError):
    """A path from a request that leaves the root folder."""


def inside(root: Path, relative: str) -> Path:
    """root/relative, refused when relative is absolute or its resolved path leaves root."""
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise PathRefused(f"{relative!r}: not a path inside the root folder. Fix: a relative path without '..'")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):  # a symlink out of the root
        raise PathRefused(f"{relative!r} leads outside the root folder {root}. Fix: a path inside it")
    return path


def run_folders(root: Path) -> list[Path]:
    found = []
    base = len(root.parts)
    for here, dirs, files in os.walk(root):
        if "plan.json" in files:
            found.append(Path(here))
            dirs.clear()  # a run's checkpoints hold no runs
            continue
        depth = len(Path(here).parts) - base
        dirs[:] = [] if depth >= MAX_DEPTH else [d for d in dirs if d not in SKIP and not d.startswith(".")]
    return sorted(found)


def history(folder: Path) -> list[dict]:
    """trainer_log.jsonl's rows (written whole through a temporary name, so never half a row)."""
    try:
        text = (folder / LOG_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _is_running(plan_file: Path) -> bool:
    """A process of this machine has the run's plan on its command line (the launcher's ranks do)."""
    needle = str(plan_file).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "cmdline").read_bytes():
                return True
        except OSError:  # gone meanwhile, or another user's
            continue
    return False


def status(folder: Path, rows: list[dict]) -> str:
    train = [r for r in rows if "loss" in r]
    if _is_running(folder / "plan.json"):
        return "running"
    if train and train[-1]["step"] >= train[-1]["total_steps"]:
        return "finished"
    logs = sorted(folder.glob("logs/rank-*.log"))
    if any(STOPPED in last_run_text(p) for p in logs):
        return "stopped"
    if failure_report(folder, 0) is not None:
        return "failed"
    return "stopped" if train or complete_checkpoints(folder) else "failed"


def summary(root: Path, folder: Path) -> dict:
    try:
        recipe = json.loads((folder / "plan.json").read_text(encoding="utf-8"))["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        recipe = {}
    rows = history(folder)
    train = [r for r in rows if "loss" in r]
    return {
        "name": folder.relative_to(root).as_posix(),
        "status": status(folder, rows),
        "stage": recipe.get("stage"),
        "method": (recipe.get("method") or {}).get("name"),
        "model": (recipe.get("model") or {}).get("path"),
        "step": train[-1]["step"] if train else 0,
        "total_steps": train[-1]["total_steps"] if train else None,
        "loss": train[-1]["loss"] if train else None,
        "checkpoints": [path.name for _, path in complete_checkpoints(folder)],
    }


def list_runs(root: Path) -> list[dict]:
    return [summary(root, folder) for folder in run_folders(root)]


def rank_tails(folder: Path) -> dict[str, str]:
    """The last lines of each rank's last run, by log name."""
    return {
        path.stem: "\n".join(last_run_text(path).rstrip("\n").splitlines()[-TAIL_LINES:])
        for path in sorted(folder.glob("logs/rank-*.log"))
    }


def run_detail(root: Path, name: str) -> dict:
    folder = inside(root, name)
    if not (folder / "plan.json").is_file():
        raise FileNotFoundError(f"{name}: no run there (no plan.json). Fix: one of the names /api/runs lists")
    return {
        **summary(root, folder),
        "rows": history(folder),
        "ranks": rank_tails(folder),
        "failure": failure_report(folder, 0),  # the first failing rank's lines, as the CLI prints them
        "plan": plan_text(folder),
    }


def plan_text(folder: Path) -> str:
    """The plan the run used, as `launch plan` prints it (its plan.json)."""
    from launcher.plan import format_plan

    try:
        return format_plan(json.loads((folder / "plan.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as err:  # another launcher's or a damaged plan.json
        return f"(plan.json cannot be shown: {err})"
