"""What the page's form needs beyond the JSON schema, all derived from the recipe's own schema and loader:
which keys apply only under a stage or method, which form field a refusal belongs beside, and a recipe
file's keys as form values. Torch-free."""

from __future__ import annotations

import re
from typing import Any

import yaml

from launcher.errors import LauncherError
from launcher.recipe.load import parse_recipe_text
from launcher.recipe.schema import all_keys

WHERE = re.compile(r"^(?P<where>[^\s:]+:\d+): ")  # "recipes/NAME.yaml:LINE: ..." as the loader refuses


def only_for() -> dict[str, list]:
    """{dotted key: [selector key, [its values under which the key applies]]} for the stage- and
    method-specific keys (the specs' `keys`, as the schema records them)."""
    return {
        dotted: [key.only_for[0], list(key.only_for[1])]
        for dotted, key in all_keys().items()
        if key.only_for is not None
    }


def refusal(message: str, text: str, path: str) -> dict:
    """The loader's refusal, with the dotted key it names by its file:line (the form field to show it
    beside), or key None when the line holds no single key (unreadable YAML, a cross-section rule)."""
    match = WHERE.match(message)
    key = None
    if match:
        try:
            _, origins = parse_recipe_text(text, path)
        except LauncherError:
            origins = {}
        on_line = [dotted for dotted, where in origins.items() if where == match["where"] and dotted]
        key = max(on_line, key=len) if on_line else None  # `method:\n  rank: 0` names method.rank, not method
    return {"error": message, "key": key}


def _text(value: Any) -> str:
    """A value as the form holds it: YAML text, a list in flow style (`[a, b]`)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def form_values(text: str, path: str) -> dict[str, str]:
    """A recipe file's keys as {dotted key: YAML text} for the form's fields (read as the CLI reads it:
    bounded, yaml.safe_load). Sections flatten into their keys; a key the schema lacks is kept, so the
    validator refuses it by name."""
    raw, _ = parse_recipe_text(text, path)
    keys = all_keys()
    values: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            dotted = f"{prefix}{name}"
            spec = keys.get(dotted)
            if isinstance(value, dict) and (spec is None or spec.kind == "section"):
                walk(value, dotted + ".")
            else:
                values[dotted] = _text(value)

    walk(raw, "")
    return values
