"""Reading a config file (a recipe, a user's DeepSpeed JSON, a LLaMA-Factory YAML, a checkpoint's or
model's JSON) within bounds. Torch-free.

A config path is refused by name before any byte is read when it is not a regular file (/dev/zero
would be read forever, a FIFO blocks until someone writes to it) or is larger than MAX_BYTES (no
config is that large; reading it whole would only use up memory).
"""

from __future__ import annotations

import os
import stat

from launcher.errors import LauncherError

MAX_BYTES = 16 * 1024 * 1024  # the largest config file read; real ones are a few KiB
KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def _too_large(size: int) -> str:
    return f"{size / 2**20:.1f} MiB, over the {MAX_BYTES >> 20} MiB limit for a config file"


def read_config_text(path: str | os.PathLike, error: type[LauncherError], fix: str, named_by: str | None = None) -> str:
    """The UTF-8 text of a regular file of at most MAX_BYTES, else `error` naming the file, why, and
    "Fix: <fix>". named_by: the key or option that named the file, for the message."""
    where = f" (named by {named_by})" if named_by else ""

    def refuse(why: str) -> LauncherError:
        return error(f"{path}{where}: {why}. Fix: {fix}")

    try:  # O_NONBLOCK: a FIFO opens without waiting for a writer, so it can be refused instead of hanging
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise refuse(f"cannot read it ({err.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())  # the file opened, not whatever the path names by now
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"{_kind(info.st_mode)}, not a regular file; a config is read from a file")
        if info.st_size > MAX_BYTES:
            raise refuse(_too_large(info.st_size))
        try:
            data = file.read(MAX_BYTES + 1)
        except OSError as err:
            raise refuse(f"cannot read it ({err.strerror})") from None
    if len(data) > MAX_BYTES:  # grew after the check
        raise refuse(_too_large(len(data)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
