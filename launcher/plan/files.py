"""Where each node reads its plan, and writing it there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.plan.store import plan_copies_dir, private_dir, write_new

if TYPE_CHECKING:
    from launcher.plan.types import Plan


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
