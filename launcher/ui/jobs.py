"""Runs the page starts: `launch RECIPE` as a child process in its own process group, exactly as a
user would type it (cwd = the root folder), so every run is a normal run the CLI can resume. Stop
sends SIGTERM to that group: the launcher stops its ranks at the next step with a checkpoint, as
on Ctrl-C. Nothing goes through a shell."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from launcher.ui.runs import inside, summary

RECIPES = "recipes"  # under the root: the recipes the page saves
CONSOLES = "ui_logs"  # under the root: each started launcher's console output, <recipe name>.log
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class JobRefused(ValueError):
    """A start or stop the page may not do; the message names the fix."""


def recipe_path(root: Path, name: str) -> Path:
    if not NAME.fullmatch(name) or name.endswith(".yaml"):
        raise JobRefused(f"recipe name {name!r}: letters, digits, '_', '.', '-' only, no .yaml. Fix: e.g. sft_tiny")
    return root / RECIPES / f"{name}.yaml"


def launch_command(*args: str) -> list[str]:
    """`launch ARGS` (e.g. recipes/NAME.yaml) as typed in the root folder, run with this interpreter so
    this launcher's version starts."""
    return [sys.executable, "-m", "launcher.cli", *args]


def resume_args(root: Path, run: str) -> tuple[str, list[str]]:
    """(recipe name, `launch` arguments) that resume the run in root/RUN as the CLI does: the recipe file it was
    started from with train.resume=auto on that folder. Refused for a run still running, already complete, with
    no checkpoint, or whose recipe file is not under the root."""
    folder = inside(root, run)
    try:
        recipe_file = json.loads((folder / "plan.json").read_text(encoding="utf-8"))["recipe_file"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise JobRefused(f"{run}: no run there ({err}). Fix: pick one of the listed runs") from None
    run_now = summary(root, folder)
    if run_now["status"] == "running":
        raise JobRefused(f"{run} is running. Fix: stop it first, or wait for it")
    if run_now["status"] == "finished":
        raise JobRefused(
            f"{run}: already complete (step {run_now['step']} of {run_now['total_steps']}). "
            "Fix: raise train.max_steps in its recipe and Start it to train further"
        )
    if not run_now["checkpoints"]:
        raise JobRefused(f"{run}: no checkpoint to resume from. Fix: Start its recipe again (a new run)")
    recipe = Path(recipe_file or "").resolve()
    if not recipe.is_file() or not recipe.is_relative_to(root.resolve()) or not NAME.fullmatch(recipe.stem):
        raise JobRefused(
            f"{run}: its recipe file {recipe_file} is not a recipe under the root. "
            f"Fix: in a terminal, launch {recipe_file} train.resume=auto output.dir={folder}"
        )
    args = [recipe.relative_to(root.resolve()).as_posix(), "train.resume=auto", f"output.dir={run}"]
    return recipe.stem, args


class Jobs:
    def __init__(self, root: Path):
        self.root = root
        self.children: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()  # the server answers each request in its own thread

    def save(self, name: str, text: str) -> Path:
        """Write the recipe, never over a different one of the user's (the same text: a resume)."""
        path = recipe_path(self.root, name)
        if path.exists() and path.read_text(encoding="utf-8") != text:
            raise JobRefused(f"{path} already holds another recipe. Fix: choose another recipe name, or load that file")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, name: str, text: str) -> list[str]:
        with self.lock:
            self._refuse_running(name)
            return self._spawn(name, launch_command(str(self.save(name, text).relative_to(self.root))))

    def resume(self, name: str, args: list[str]) -> list[str]:
        """`launch ARGS` (resume_args) under the recipe's name: Stop and Start of that name see it."""
        with self.lock:
            self._refuse_running(name)
            return self._spawn(name, launch_command(*args))

    def _refuse_running(self, name: str) -> None:
        running = self.children.get(name)
        if running is not None and running.poll() is None:
            raise JobRefused(f"{name} is running (pid {running.pid}). Fix: stop it first, or wait for it")

    def _spawn(self, name: str, command: list[str]) -> list[str]:
        """The command started in its own process group, its console appended to ui_logs/NAME.log."""
        console = self.root / CONSOLES / f"{name}.log"
        console.parent.mkdir(parents=True, exist_ok=True)
        with open(console, "ab") as out:
            self.children[name] = subprocess.Popen(
                command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        return command

    def stop(self, name: str) -> int:
        with self.lock:
            child = self.children.get(name)
            if child is None or child.poll() is not None:
                raise JobRefused(f"{name}: no run started from this page is running. Fix: pick a running one")
            os.killpg(child.pid, signal.SIGTERM)
            return child.pid

    def listing(self) -> list[dict]:
        with self.lock:
            return [
                {"name": name, "pid": child.pid, "exit_code": child.poll(), "console": self.console_tail(name)}
                for name, child in self.children.items()
            ]

    def console_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.root / CONSOLES / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
