"""launcher/recipe/types.py rendered from the schema: one TypedDict per recipe section, so a misspelt
recipe key is a type error. `launch schema --typeddict` prints it; a test keeps the committed module
equal to it, as docs/recipe.md is. Torch-free."""

from __future__ import annotations

import json
import keyword
from collections.abc import Mapping

from launcher.recipe.schema import SCHEMA, Key, Section

HEADER = '''"""The resolved recipe (what load_recipe returns): one TypedDict per section, every key present.

Generated from launcher/recipe/schema.py by `launch schema --typeddict > launcher/recipe/types.py`; do not
edit by hand (tests/recipe/test_schema_doc.py fails when this file and the schema differ). A key that only some
stages or methods read is NotRequired: the resolved recipe holds it only under them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:  # annotations are never evaluated at run time (Python 3.10 has no typing.NotRequired)
    from typing import NotRequired
'''
KINDS = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "str_list": "list[str]",
    "float_list": "list[float]",
}


def _class_name(section: str) -> str:
    return "".join(part.capitalize() for part in section.split("_")) + "Section"


def _annotation(key: Key, section_class: str | None) -> str:
    """A key's value type: its kind, its literals, None where nullable; NotRequired where a selector decides."""
    parts = [section_class or KINDS[key.kind]]
    parts += [f"Literal[{', '.join(json.dumps(literal) for literal in key.literals)}]"] if key.literals else []
    parts += ["None"] if key.nullable else []
    annotation = " | ".join(parts)
    return annotation if key.only_for is None else f"NotRequired[{annotation}]"


def _typeddict(name: str, doc: str, keys: Mapping[str, Key | Section], classes: list[str]) -> None:
    """Append the class of one mapping to `classes`, after the classes of the sections inside it."""
    fields = []
    for key_name, spec in keys.items():
        assert key_name.isidentifier() and not keyword.iskeyword(key_name), key_name
        if isinstance(spec, dict):
            inner = _class_name(key_name)
            _typeddict(inner, f"The recipe's `{key_name}` section.", spec, classes)
            fields.append(f"    {key_name}: {inner}")
        elif spec.kind == "section":
            inner = _class_name(key_name)
            _typeddict(inner, spec.doc[:1].upper() + spec.doc[1:] + ".", spec.fields, classes)
            fields.append(f"    {key_name}: {_annotation(spec, inner)}")
        else:
            fields.append(f"    {key_name}: {_annotation(spec, None)}")
    classes.append("\n".join([f"class {name}(TypedDict):", f'    """{doc}"""', "", *fields]))


def recipe_typeddicts() -> str:
    """launcher/recipe/types.py: the TypedDicts of the resolved recipe, sections first, `Recipe` last."""
    classes: list[str] = []
    _typeddict("Recipe", "A resolved recipe: every section, every key present.", SCHEMA, classes)
    names = [c.split("(", 1)[0] for c in classes]
    assert len(set(names)) == len(names), names  # two sections of one name would need longer class names
    return HEADER + "".join(f"\n\n{c}\n" for c in classes)
