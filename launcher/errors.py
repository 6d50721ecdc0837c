"""The launcher's errors, and the one way each kind ends a process. Torch-free.

A LauncherError is bad input from the user (a recipe, a dataset, a checkpoint, a flag): the CLI
prints its message as one line and exits 2; the worker prints it as one `[launcher] <kind>
error:` line and exits 2. Anything else from our code is a bug and keeps its traceback.
A RunStopped is a run outcome, not an error: the run saved what it could and ends with its own
exit code.
"""

from __future__ import annotations

import reprlib

TAG = "[launcher]"  # starts every line the worker prints about itself
STOPPED = f"{TAG} stopped:"  # a run the NaN/Inf guard stopped (TrainingStopped's message starts with "stopped:")


class LauncherError(Exception):
    """Bad user input; the message names the key or file, the value and the fix."""

    code = 2
    kind = "input"  # the worker's line: "[launcher] <kind> error: <message>"


class RecipeError(LauncherError):
    """A recipe (or the plan made from it) that cannot run."""

    kind = "plan"


class DataError(LauncherError):
    """Bad dataset registry, file or row; the message names the file and the fix."""

    kind = "data"


class MethodError(LauncherError):
    """A method that cannot apply to this model (known only once it is loaded): the worker
    prints it as one line and exits before training."""

    kind = "method"


class CheckpointError(LauncherError):
    """A checkpoint, adapter, base model or output folder that cannot be used; the message names
    the file, what is wrong with it, and the fix."""

    kind = "checkpoint"


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose files do not match its manifest (or are missing, or unlisted)."""


class ConsolidateError(CheckpointError):
    """A checkpoint that cannot be consolidated; the message says why and what to do."""


class MergeError(CheckpointError):
    """An adapter or base that cannot be merged; the message says why and what to do."""


class ChatError(LauncherError):
    """Bad chat input (a malformed row, sampling flags without --do-sample); the message names it."""


class EvalError(LauncherError):
    """Bad eval input (no eval data, no model); the message names the fix."""


class ServeError(LauncherError):
    """Bad serve arguments (an adapter that is not one, a missing vLLM); the message names the fix."""


class UIError(LauncherError):
    """Bad `launch ui` arguments (a host others can reach without a token, a root that is no folder)."""


class LFImportError(LauncherError):
    """An LF file that cannot be read at all; the message names it and the fix."""


class MetricsUnavailable(LauncherError):
    """A scoring library that is not installed; the message names the pip extra."""


def worker_error_line(err: LauncherError) -> str:
    return f"{TAG} {err.kind} error: {err}"


# What ranklog looks for to tell the failing rank: the worker's own error and stop lines.
WORKER_MARKERS = (
    STOPPED,
    *(f"{TAG} {cls.kind} error:" for cls in (LauncherError, RecipeError, DataError, MethodError, CheckpointError)),
)


class RunStopped(Exception):
    """A run that stopped early with its state saved; `code` is the worker's exit code."""

    code: int


def listing(items, limit: int = 8, sep: str = ", ") -> str:
    """'a, b, c' for a message, capped: a hostfile of 500 hosts or a section's every key would
    bury the one line that says what is wrong."""
    items = [str(i) for i in items]
    shown = sep.join(items[:limit])
    return shown + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # at most 8 items a level, 3 levels deep, long strings cut in the middle
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, 160, 160, 40
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    return short


_SHORT = _short_repr()


def shown(value: object, limit: int = 200) -> str:
    """A user's value as a message quotes it: repr'd (a newline stays escaped on its line) and bounded
    however long, deeply nested or (YAML aliases) repeated the value is."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
