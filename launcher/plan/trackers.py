"""The experiment trackers of output.report_to beside TensorBoard (wandb, mlflow, swanlab): each logs offline
into output.dir, never to a server. Torch-free: the planner refuses a missing package or a launching shell that
asks for online logging, and puts each tracker's offline settings into the ranks' environment (plan["env"]),
so no rank can reach the network or stop at a login prompt."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class Tracker:
    package: str  # the import name whose absence the planner refuses
    callback: str  # transformers.integrations' TrainerCallback for it
    finish: str  # "module:function" closing its run (the callbacks leave that to atexit, which a stopped run's
    # torchrun may cut short: the last steps would be lost)
    folder: str  # under output.dir
    env: Callable[[Path], dict[str, str]]  # the offline settings, given the tracker's folder
    online: Callable[[], str | None]  # the launching shell's setting that would log online, shown as NAME=value
    read: str  # how the user looks at (or uploads) what it logged; {folder} is the tracker's folder
    below: tuple[int, int] | None = None  # the first (major, minor) release transformers' callback fails with


def _set_to(name: str, *offline: str) -> Callable[[], str | None]:
    """NAME=value when the shell sets NAME to anything but the offline values."""

    def online() -> str | None:
        value = os.environ.get(name)
        return f"{name}={value}" if value is not None and value.lower() not in offline else None

    return online


TRACKERS = {
    "wandb": Tracker(
        package="wandb",
        callback="WandbCallback",
        finish="wandb:finish",
        folder="wandb",
        # WANDB_DIR is the parent of the wandb/ folder it writes
        env=lambda folder: {"WANDB_MODE": "offline", "WANDB_DIR": str(folder.parent)},
        online=_set_to("WANDB_MODE", "offline", "dryrun", "disabled"),
        read="upload it later with `wandb sync {folder}/latest-run`",
    ),
    "mlflow": Tracker(
        package="mlflow",
        callback="MLflowCallback",
        finish="mlflow:end_run",
        folder="mlruns",
        # MLflow 3 refuses a file store unless asked; its telemetry would reach the network
        env=lambda folder: {
            "MLFLOW_TRACKING_URI": folder.as_uri(),
            "MLFLOW_ALLOW_FILE_STORE": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
        online=_set_to("MLFLOW_TRACKING_URI"),
        read="view it with `mlflow ui --backend-store-uri {folder}` (the full mlflow package)",
    ),
    "swanlab": Tracker(
        package="swanlab",
        callback="SwanLabCallback",
        finish="swanlab:finish",
        folder="swanlog",
        # local mode: without it swanlab asks for an API key on the terminal (cloud mode)
        env=lambda folder: {"SWANLAB_MODE": "local", "SWANLAB_LOG_DIR": str(folder)},
        online=_set_to("SWANLAB_MODE", "local", "offline", "disabled"),
        read="view it with `swanlab watch {folder}`",
        # swanlab 0.7+ reworked its run API: transformers 5.24's SwanLabCallback stops at train begin
        # ("No active Run. Call swanlab.init() first.")
        below=(0, 7),
    ),
}


def chosen(report_to: list[str]) -> list[str]:
    return [name for name in report_to if name in TRACKERS]


def check_trackers(report_to: list[str]) -> None:
    """Refuse a tracker that is not installed, or one the launching shell configures to log online (it would
    need a login and a server; here every tracker logs offline into output.dir)."""
    for name in chosen(report_to):
        tracker = TRACKERS[name]
        if importlib.util.find_spec(tracker.package) is None:
            raise RecipeError(
                f"output.report_to: {name} is not installed. Fix: pip install 'llm-launcher[loggers]' "
                f"(or pip install {name}), or remove {name} from output.report_to"
            )
        _refuse_untested(name, tracker)
        setting = tracker.online()
        if setting is not None:
            raise RecipeError(
                f"output.report_to: {name} logs offline into output.dir/{tracker.folder} here, but this shell sets "
                f"{setting}, which the run would not follow (logging to a server needs a login). "
                f"Fix: unset {setting.split('=')[0]}, and {tracker.read.format(folder=f'output.dir/{tracker.folder}')}"
            )


def _refuse_untested(name: str, tracker: Tracker) -> None:
    """A release at or past `below` fails inside the ranks, after the model loads: refuse it before launch."""
    if tracker.below is None:
        return
    version = importlib.metadata.version(tracker.package)
    release = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if release >= tracker.below:
        bound = ".".join(map(str, tracker.below))
        raise RecipeError(
            f"output.report_to: {name} {version} is installed; transformers' callback for it works with releases "
            f"before {bound} only (it stops the run at its first step). Fix: pip install '{name}<{bound}' "
            f"(pip install 'llm-launcher[loggers]' pins it), or remove {name} from output.report_to"
        )


def tracker_env(report_to: list[str], output_dir: str) -> dict[str, str]:
    """Every chosen tracker's offline settings, logging into its folder under output_dir."""
    env: dict[str, str] = {}
    for name in chosen(report_to):
        tracker = TRACKERS[name]
        env.update(tracker.env(Path(output_dir) / tracker.folder))
    return env


def tracker_lines(report_to: list[str], output_dir: str) -> list[str]:
    """Where each chosen tracker logs and how to look at it (`launch` prints these)."""
    return [
        f"{name}: offline in {Path(output_dir) / TRACKERS[name].folder}; "
        + TRACKERS[name].read.format(folder=Path(output_dir) / TRACKERS[name].folder)
        for name in chosen(report_to)
    ]
