"""The worker every rank runs: read plan.json, then the Run's phases (worker/run.py): setup, train, save.

Started by torchrun / accelerate / the deepspeed launcher as `python -m launcher.worker --plan FILE`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from launcher.util import quiet

quiet.install()  # known-harmless dependency messages (launcher/util/quiet.py), before anything logs them


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True, help="plan.json written by `launch`")
    parsed = parser.parse_args(argv)
    from launcher.errors import TAG, LauncherError, RunStopped, worker_error_line
    from launcher.plan.files import read_plan

    rank = int(os.environ.get("RANK", "0"))
    code = 0
    try:
        plan = read_plan(parsed.plan)  # not our plan, or another launcher's (RecipeError): run nothing from it
        from launcher.worker.lean_imports import skip_unused_libraries

        skip_unused_libraries(plan["recipe"], plan["deepspeed"])
        from launcher.monitoring.ranklog import start_rank_log

        width = shutil.get_terminal_size((0, 0)).columns or None  # before stdout becomes the rank-log pipe
        terminal = start_rank_log(plan["output_dir"], rank)
        from launcher.backends.lifeline import watch_launcher

        watch_launcher()  # this rank ends with the launcher, even when nobody is left to stop it
        from launcher.worker.run import Run

        run = Run(plan, rank, terminal, width)
        run.setup()
        run.train()
        run.save()
    except LauncherError as err:  # bad input (plan, data, a method that does not fit the model): one line, no traceback
        print(worker_error_line(err), file=sys.stderr, flush=True)
        raise SystemExit(err.code) from None
    except RunStopped as err:  # NaN/Inf steps (exit 3) or SIGTERM (143): checkpoint saved
        if rank == 0:
            print(f"{TAG} {err}", file=sys.stderr, flush=True)
        code = err.code
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing the final files
    # Everything is saved and flushed now: leave without tearing the process group and the
    # interpreter down. That teardown sometimes aborts in a C++ destructor ("terminate called
    # without an active exception", seen on CPU + gloo) and turned finished runs into failures.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
