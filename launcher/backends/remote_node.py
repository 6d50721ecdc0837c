"""The remote end of a hostfile node, started over ssh by launcher/backends/ssh.py.

stdin carries one JSON line {"plan", "node_rank", "env"} and then stays open for the whole
run: the launcher closing it, or the ssh connection dropping, is the signal to stop. So the
node's processes never outlive the launcher, whatever killed it. The node's command runs in
its own process group (local backend); this wrapper is the subreaper of its ranks, and
kills any that outlive their agent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from launcher.backends.proctree import become_subreaper, kill_descendants
from launcher.errors import RecipeError
from launcher.plan.files import discard_plan_copy


def _stop_on_eof() -> None:
    sys.stdin.read()  # returns at EOF: the launcher is gone or tearing the nodes down
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # until run_node takes over
    header = json.loads(sys.stdin.readline())
    plan, node_rank = header["plan"], header["node_rank"]
    os.environ.update(header["env"])
    threading.Thread(target=_stop_on_eof, daemon=True).start()

    from launcher.backends.local import run_node
    from launcher.plan import write_plan

    plan_file = plan["nodes"][node_rank]["plan_file"]
    try:
        write_plan(plan, plan_file)
        world = plan["world"]  # the first line a user sees from this host, prefixed with its name by node 0
        print(
            f"[launch] node {node_rank} of {world['nnodes']} started, {world['nproc_per_node']} {world['device']} "
            f"processes, rendezvous {world['master_addr']}:{world['master_port']}",
            flush=True,
        )
        return run_node(plan, node_rank)
    except RecipeError as err:  # e.g. a plan copy folder another user planted
        print(f"launch: error: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        kill_descendants()
        discard_plan_copy(plan_file)


if __name__ == "__main__":
    sys.exit(main())
