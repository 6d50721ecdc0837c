"""Where each node reads its plan, and writing it there safely.

Plan files on disk, safe against other local users. Torch-free.

A node > 0 keeps its plan copy under the temp dir, where anyone can create names. So the copy
goes into a folder of this user's alone (mode 0700, checked, never followed through a link),
every plan is written to a fresh exclusive temp file and renamed over the target (a planted
symlink is replaced, never written through), and the worker reads a plan only if this user
owns it and nobody else can write it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.util.paths import write_new


def plan_copies_dir() -> Path:
    """The per-user folder of node-local plan copies: <tmp>/launcher-plans-<uid>."""
    return Path(tempfile.gettempdir()) / f"launcher-plans-{os.getuid()}"


def folder_problem(path: Path) -> str | None:
    """Why path is not a real folder of ours that nobody else can enter, or None."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return "is a symlink" if stat.S_ISLNK(info.st_mode) else "is not a folder"
    if info.st_uid != os.getuid():
        return f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
    if info.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):o}, open to other users"
    return None


def private_dir(path: Path) -> Path:
    """Create path (mode 0700) or accept it only as a real folder of ours that nobody else can enter."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    problem = folder_problem(path)
    if problem is None:
        return path
    raise RecipeError(
        f"plan copy folder {path} {problem}; another user could read or swap this node's plan. "
        f"Fix: remove it (`rm -rf {path}`) and launch again; it is recreated private (mode 700)"
    )


def read_own(path: str | Path) -> str:
    """The text of a plan file this user owns and nobody else may write; RecipeError otherwise.
    Opened without following a final symlink, and checked on the opened file itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        problem = "is a symlink" if err.errno == errno.ELOOP else err.strerror
        raise RecipeError(
            f"--plan {path} {problem}. Fix: start the worker through `launch`, which writes the plan"
        ) from None
    with os.fdopen(fd, encoding="utf-8") as plan:
        info = os.fstat(plan.fileno())
        if info.st_uid != os.getuid():
            problem = f"belongs to uid {info.st_uid}, not to you (uid {os.getuid()})"
        elif info.st_mode & 0o022:
            problem = f"has mode {stat.S_IMODE(info.st_mode):o}: other users can write it"
        else:
            return plan.read()
    raise RecipeError(
        f"--plan {path} {problem}, so it may not be the plan you launched; refusing to run it. "
        f"Fix: launch again (it rewrites the plan), or `chmod go-w {path}` if it is yours"
    )


def discard_plan_copy(path: str) -> None:
    """Remove a node-local plan copy (node > 0) and its folder once the node is done; folders
    that are not this user's private ones (write_plan refused them) are left alone."""
    copy = Path(path)
    try:
        if folder_problem(copy.parent.parent) or folder_problem(copy.parent):
            return
    except FileNotFoundError:
        return
    copy.unlink(missing_ok=True)
    try:
        copy.parent.rmdir()
    except OSError:  # not empty, or already gone
        pass


if TYPE_CHECKING:
    from launcher.plan.types import Plan


PLAN_VERSION = 2  # plan.json's shape; raise it when a worker could misread a plan another launcher wrote


def node_plan_file(output_dir: str, node_rank: int) -> str:
    """Where node K's worker reads the plan: output.dir/plan.json on node 0 (the run's record), a
    node-local path elsewhere, so nodes without a shared file system need no output dir for it and
    a shared one never sees two nodes write (or node 0's overwrite delete) the same file."""
    if node_rank == 0:
        return str(Path(output_dir) / "plan.json")
    digest = hashlib.sha1(output_dir.encode()).hexdigest()[:12]
    return str(plan_copies_dir() / digest / f"plan-node{node_rank}.json")


def write_plan(plan: Plan, path: str | None = None) -> str:
    """Write the plan atomically (default: output.dir/plan.json), never through a link; a node's
    own copy (any other path) goes into folders private to this user. Returns its path."""
    target = Path(path or plan["plan_file"])
    if str(target) == plan["plan_file"]:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_new(target, json.dumps(plan, indent=2) + "\n")
    else:
        private_dir(target.parent.parent)
        private_dir(target.parent)
        write_new(target, json.dumps(plan, indent=2) + "\n", mode=0o600)
    return str(target)


def read_plan(path: str) -> Plan:
    """The plan a worker runs: a file of this user's (read_own) in this launcher's plan version."""
    plan = json.loads(read_own(path))
    version = plan.get("version") if isinstance(plan, dict) else None
    if version != PLAN_VERSION:
        raise RecipeError(
            f"--plan {path} has plan version {version!r}, but this launcher reads version {PLAN_VERSION}: "
            "another version of the launcher wrote it. Fix: re-run `launch` with this launcher to write a new plan"
        )
    return plan
