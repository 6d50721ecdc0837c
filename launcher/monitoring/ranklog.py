"""Per-rank logs: output.dir/logs/rank-K.log gets everything rank K writes to stdout and stderr.

The worker calls `start_rank_log` first thing. Its file descriptors 1 and 2 become pipes
into a small tee process (`python -m launcher.monitoring.ranklog`), so C++ output, fatal
aborts and the final traceback are logged too, and the tee drains the pipes after the rank
died. The log copy drops terminal control codes and progress-bar redraws. Rank 0 also
shows both streams on the console; other ranks show only stderr (warnings, errors) and keep
their stdout in the log: 64 ranks printing the same lines would bury the one that matters.

After a failed run the launcher calls `failure_report` to print the failing rank's last
lines (backends/local.py).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.errors import WORKER_MARKERS

RUN_HEADER = b"=== launcher worker start "  # each worker start appends one; a report reads the last run only
CONTROL = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# a traceback, a fatal abort, or one of the worker's own one-line failures (launcher/errors.py)
ERROR_MARKERS = ("Traceback (most recent call last)", "Fatal Python error", "terminate called", *WORKER_MARKERS)
TAIL_LINES = 40


def log_path(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / "logs" / f"rank-{rank}.log"


def start_rank_log(output_dir: str | Path, rank: int) -> bool:
    """Tee this process's stdout and stderr into its rank log; returns whether stdout was a terminal."""
    was_tty = sys.stdout.isatty()
    path = log_path(output_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as log:
        log.write(RUN_HEADER + f"rank {rank} pid {os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    show_stdout = "1" if rank == 0 else "0"
    # The tee inherits the original fds 1 and 2 and the pipes' read ends. Its own session keeps
    # Ctrl-C and the launcher's group kill off it: it ends at EOF, once every writer is gone.
    subprocess.Popen(
        [sys.executable, "-m", "launcher.monitoring.ranklog", str(path), show_stdout],
        stdin=subprocess.DEVNULL,
        pass_fds=(out_read, err_read),
        start_new_session=True,
        env={**os.environ, "LAUNCHER_TEE_FDS": f"{out_read},{err_read}"},
    )
    os.close(out_read)
    os.close(err_read)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(out_write, 1)
    os.dup2(err_write, 2)
    os.close(out_write)
    os.close(err_write)
    return was_tty


class _LogCleaner:
    """Complete lines without control codes; a carriage return restarts the line (redraws)."""

    def __init__(self):
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        if b"\r" in self.pending:  # a bar redrawing in place: only its latest state can survive
            self.pending = self.pending[self.pending.rindex(b"\r") :]
        return b"".join(self._clean(line) + b"\n" for line in lines)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        cleaned = self._clean(rest)
        return cleaned + b"\n" if cleaned else b""

    @staticmethod
    def _clean(line: bytes) -> bytes:
        line = CONTROL.sub(b"", line.rstrip(b"\r"))
        return line[line.rfind(b"\r") + 1 :]


def _tee(path: str, show_stdout: bool) -> None:
    """Copy the worker's two pipes to the console (as they come) and to the log (cleaned) until both close."""
    out_fd, err_fd = (int(fd) for fd in os.environ["LAUNCHER_TEE_FDS"].split(","))
    targets = {out_fd: 1 if show_stdout else None, err_fd: 2}
    cleaners = {out_fd: _LogCleaner(), err_fd: _LogCleaner()}
    selector = selectors.DefaultSelector()
    for fd in targets:
        selector.register(fd, selectors.EVENT_READ)
    with open(path, "ab", buffering=0) as log:
        while selector.get_map():
            for key, _ in selector.select():
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    log.write(cleaners[key.fd].flush())
                    continue
                target = targets[key.fd]
                if target is not None:
                    try:
                        os.write(target, data)
                    except OSError:  # the console went away; keep logging
                        targets[key.fd] = None
                log.write(cleaners[key.fd].feed(data))


def last_run_text(path: Path) -> str:
    """The last run's part of a rank log."""
    data = path.read_bytes()
    start = data.rfind(RUN_HEADER)
    return data[max(start, 0) :].decode("utf-8", errors="replace")


def failure_report(output_dir: str | Path, since: float) -> str | None:
    """The tail of the rank log that failed first, or None when no log written since `since` shows a failure.

    "First": the erroring log whose last write is oldest. A rank dies (and stops writing) when
    it fails; the others write their consequential errors later, when the engine stops them.
    """
    logs = [p for p in Path(output_dir, "logs").glob("rank-*.log") if p.stat().st_mtime >= since]
    failed = [p for p in logs if any(marker in last_run_text(p) for marker in ERROR_MARKERS)]
    if not failed:
        return None
    failed.sort(key=lambda p: p.stat().st_mtime)
    first = failed[0]
    tail = "\n".join(last_run_text(first).rstrip("\n").splitlines()[-TAIL_LINES:])
    others = f"; also with errors: {', '.join(p.name for p in failed[1:])}" if failed[1:] else ""
    return f"[launch] {first.stem} failed first; its last lines ({first}{others}):\n{tail}"


if __name__ == "__main__":
    # the deepspeed launcher SIGTERMs its ranks' whole trees at a stop: the tee must outlive its rank's
    # last words (the checkpoint it saves then); it ends at EOF, when the rank is gone
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _tee(sys.argv[1], sys.argv[2] == "1")
