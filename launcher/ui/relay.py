"""Child `launch` verbs whose output the page sees while they run: each child's stdout (and, for the
Export tab, its stderr) is read as it comes, so a streamed chat reply or a merge's progress lines reach
the page before the child ends. A Task is the children of one request and how their outputs make its
answer."""

from __future__ import annotations

import codecs
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from launcher.ui.jobs import launch_command

TOOL_TIMEOUT = 1800  # seconds: a merge of a large model on CPU; a hung child is killed, not waited on forever
CHUNK = 4096


class ToolFailed(Exception):
    """A child `launch` that exited non-zero; the message is its last error line."""


class Child:
    """`launch ARGS` in the root folder (no shell, unbuffered prints), its output collected as it comes;
    `merged`: stderr goes into the same text (progress lines), else apart (a reply stays only the reply)."""

    def __init__(self, root: Path, args: list[str], changed: threading.Condition, merged: bool = False):
        self.verb, self.changed = args[0], changed
        self.deadline = time.monotonic() + TOOL_TIMEOUT
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            launch_command(*args),
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True)]
        if not merged:
            self.readers.append(threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True))
        for reader in self.readers:
            reader.start()

    def _read(self, pipe: IO[bytes] | None, into: list[str]) -> None:
        assert pipe is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(pipe.fileno(), CHUNK):  # what is there now, not a whole line
            with self.changed:
                into.append(decoder.decode(chunk))
                self.changed.notify_all()
        pipe.close()
        with self.changed:
            self.changed.notify_all()

    def text(self) -> str:
        with self.changed:
            return "".join(self.out)

    def running(self) -> bool:
        return any(reader.is_alive() for reader in self.readers)

    def wait(self) -> str:
        """The whole output once the child exits; ToolFailed with its error line when it fails or runs too long."""
        try:
            code = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ToolFailed(f"launch {self.verb} ran over {TOOL_TIMEOUT} s and was stopped") from None
        for reader in self.readers:
            reader.join()
        if code != 0:
            lines = [line for line in "".join(self.err or self.out).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("launch: error:")]
            raise ToolFailed((errors or lines or [f"launch {self.verb} exited {code}"])[-1])
        return self.text()


@dataclass
class Task:
    """One request's children by the answer's field, what the page shows of each while it runs (`view`), and
    the answer their whole outputs make (`finish`)."""

    children: dict[str, Child]
    view: Callable[[str], str]
    finish: Callable[[dict[str, str]], dict]

    def partial(self) -> dict[str, str]:
        return {field: self.view(child.text()) for field, child in self.children.items()}

    def updates(self) -> Iterator[dict[str, str]]:
        """The partial outputs each time one grows, until every child has ended (or passed its deadline)."""
        changed = next(iter(self.children.values())).changed
        shown: dict[str, str] = {}
        while True:
            with changed:
                alive = [c for c in self.children.values() if c.running() and time.monotonic() < c.deadline]
                if self.partial() == shown and alive:
                    changed.wait(timeout=1.0)
            if self.partial() != shown:
                shown = self.partial()
                yield shown
            if not alive:
                return

    def answer(self) -> dict:
        return self.finish({field: child.wait() for field, child in self.children.items()})


def task(
    root: Path,
    runs: dict[str, list[str]],
    finish: Callable[[dict[str, str]], dict],
    view: Callable[[str], str] = str,
    merged: bool = False,
) -> Task:
    """The children `launch ARGS` of `runs` (field -> args) started at once; see Task."""
    changed = threading.Condition()
    children = {field: Child(root, args, changed, merged) for field, args in runs.items()}
    return Task(children, view, finish)
