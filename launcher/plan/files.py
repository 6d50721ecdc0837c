"""Where each node reads its plan, writing it there, and reading it back in the worker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from launcher.errors import RecipeError
from launcher.plan.store import plan_copies_dir, private_dir, read_own, write_new

PLAN_VERSION = 1  # plan.json's shape; raise it when a worker could misread a plan another launcher wrote


def node_plan_file(output_dir: str, node_rank: int) -> str:
    """Where node K's worker reads the plan: output.dir/plan.json on node 0 (the run's record), a
    node-local path elsewhere, so nodes without a shared file system need no output dir for it and
    a shared one never sees two nodes write (or node 0's overwrite delete) the same file."""
    if node_rank == 0:
        return str(Path(output_dir) / "plan.json")
    digest = hashlib.sha1(output_dir.encode()).hexdigest()[:12]
    return str(plan_copies_dir() / digest / f"plan-node{node_rank}.json")


def write_plan(plan: dict, path: str | None = None) -> str:
    """Write the plan atomically (default: output.dir/plan.json), never through a link; a node's
    own copy (any other path) goes into folders private to this user. Returns its path."""
    path = Path(path or plan["plan_file"])
    if str(path) == plan["plan_file"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new(path, json.dumps(plan, indent=2) + "\n")
    else:
        private_dir(path.parent.parent)
        private_dir(path.parent)
        write_new(path, json.dumps(plan, indent=2) + "\n", mode=0o600)
    return str(path)


def read_plan(path: str) -> dict:
    """The plan a worker runs: a file of this user's (store.read_own) in this launcher's plan version."""
    plan = json.loads(read_own(path))
    version = plan.get("version") if isinstance(plan, dict) else None
    if version != PLAN_VERSION:
        raise RecipeError(
            f"--plan {path} has plan version {version!r}, but this launcher reads version {PLAN_VERSION}: "
            "another version of the launcher wrote it. Fix: re-run `launch` with this launcher to write a new plan"
        )
    return plan
