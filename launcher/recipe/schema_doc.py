"""docs/recipe.md rendered from the schema: every key, its type, default, allowed values, the
stage/method it applies to and its doc. `launch schema --markdown` prints it; a test keeps the
committed file equal to it, so the reference cannot go stale. Torch-free."""

from __future__ import annotations

from launcher.recipe.schema import SCHEMA, Key

HEADER = """# Recipe reference

Generated from `launcher/recipe/schema.py` by `launch schema --markdown > docs/recipe.md`; do not edit by
hand (tests/recipe/test_schema_doc.py fails when this file and the schema differ). `launch schema` prints
the same contract as JSON Schema for editors. Overrides use the dotted names: `launch RECIPE
train.lr=2e-5`.
"""


def _kind(key: Key) -> str:
    return {"str_list": "list of str", "float_list": "list of float"}.get(key.kind, key.kind)


def _allowed(key: Key) -> str:
    parts = [", ".join(f"`{c}`" for c in key.choices)] if key.choices else []
    if key.low is not None or key.high is not None:
        low = "" if key.low is None else f"{key.low:g} {'<=' if key.low_inclusive else '<'} "
        high = "" if key.high is None else f" {'<=' if key.high_inclusive else '<'} {key.high:g}"
        parts.append(f"{low}x{high}")
    parts += [f"`{literal}`" for literal in key.literals]
    if key.nullable:
        parts.append("`null`")
    return "; ".join(parts)


def _applies(key: Key) -> str:
    if key.only_for is None:
        return "all"
    selector, values = key.only_for
    return f"{selector}: {' | '.join(str(v) for v in values)}"


def _default(key: Key) -> str:
    """As it is written in YAML: false, [demo_sft], 1.0e-4."""
    if key.default is None:
        return ""
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, list):
        return f"`[{', '.join(map(str, key.default))}]`"
    return f"`{key.default}`"


def _rows(keys: dict[str, Key], prefix: str) -> list[str]:
    rows = []
    for name, key in keys.items():
        dotted = f"{prefix}{name}"
        if key.kind == "section":
            rows.append(f"| `{dotted}` | section | | {_allowed(key)} | {_applies(key)} | {key.doc} |")
            rows += _rows(key.fields, dotted + ".")
        else:
            doc = key.doc.replace("|", "\\|")
            rows.append(f"| `{dotted}` | {_kind(key)} | {_default(key)} | {_allowed(key)} | {_applies(key)} | {doc} |")
    return rows


def recipe_reference() -> str:
    """The whole key reference as Markdown, one table per top-level section."""
    out = [HEADER]
    table_head = ["| key | type | default | allowed | applies to | what it does |", "|---|---|---|---|---|---|"]
    top_level = {name: spec for name, spec in SCHEMA.items() if isinstance(spec, Key) and spec.kind != "section"}
    if top_level:
        out += ["## top level", "", *table_head, *_rows(top_level, ""), ""]
    for name, spec in SCHEMA.items():
        if isinstance(spec, dict):
            out += [f"## {name}", "", *table_head, *_rows(spec, f"{name}."), ""]
        elif spec.kind == "section":
            out += [
                f"## {name}",
                "",
                spec.doc + " (the whole section may be `null`)." if spec.nullable else spec.doc,
                "",
                *table_head,
                *_rows(spec.fields, f"{name}."),
                "",
            ]
    return "\n".join(out).rstrip() + "\n"
