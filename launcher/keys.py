"""One recipe key's contract: type, default, range, choices, doc, and the selector it is valid under.

The schema (launcher/schema.py) is made of these; a stage or method spec (launcher/registry.py) declares
its own keys with them. No imports from the launcher: every spec module can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Key:
    """One recipe key.

    kind: int | float | bool | str | str_list | section
    literals: extra string values accepted besides the kind (e.g. "auto" for an int key)
    only_for: (selector key, allowed values): the key is only valid when the selector
        (a dotted key, e.g. "method.name") has one of these values; its default applies only then.
    aliases: other names accepted for a choice, resolved to it at load (e.g. LLaMA-Factory's).
    guess: offer the closest choice by spelling for a value that is none of them (off where a
        near name is a different thing, e.g. the llama2 template is not llama3's format).
    commas: a str_list given as one string "a,b" means [a, b].
    """

    kind: str
    default: Any = None
    doc: str = ""
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    nullable: bool = False
    literals: tuple = ()
    only_for: tuple[str, tuple] | None = None
    fields: dict[str, "Key"] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    guess: bool = True
    commas: bool = False  # str_list: one string is split at commas (LLaMA-Factory's `dataset: a,b`)
