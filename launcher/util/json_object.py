"""Reading a JSON file that must hold one object, as every input the launcher reads by path does
(a user's DeepSpeed config, a checkpoint's or model's config files). Torch-free.

A missing, unreadable, oversized or special file (config_file.py), invalid JSON and a JSON value of another kind each raise the caller's
LauncherError naming the file (with line and column for bad JSON), the key that named it where one
did, and the caller's fix, instead of a JSONDecodeError from deep inside a library.
"""

from __future__ import annotations

import json
from pathlib import Path

from launcher.errors import LauncherError
from launcher.util.config_file import read_config_text


def read_json_object(path: str | Path, error: type[LauncherError], fix: str, named_by: str | None = None) -> dict:
    """The JSON object in path, or `error` saying what is wrong, ending with "Fix: <fix>"."""
    where = f" (named by {named_by})" if named_by else ""
    text = read_config_text(path, error, fix, named_by)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}){where}. Fix: {fix}") from None
    if not isinstance(value, dict):
        raise error(f"{path}{where}: holds a JSON {type(value).__name__}, not an object. Fix: {fix}")
    return value
