"""docs/recipe.md and launcher/recipe/types.py are the schema's own renderings: a key added, removed or
changed in launcher/recipe/schema.py without regenerating them fails here."""

from __future__ import annotations

import pytest

from launcher.recipe.schema import all_keys
from launcher.recipe.schema_doc import recipe_reference
from launcher.recipe.schema_types import recipe_typeddicts
from tests.conftest import ROOT, run_launch

pytestmark = pytest.mark.unit


def test_docs_recipe_md_is_generated_from_the_schema():
    committed = (ROOT / "docs" / "recipe.md").read_text()
    assert committed == recipe_reference(), "docs/recipe.md is stale: run `launch schema --markdown > docs/recipe.md`"


def test_every_key_has_a_row_with_its_default():
    text = recipe_reference()
    for dotted, key in all_keys().items():
        if "." not in dotted and key.kind == "section":  # a top-level section is a heading of its own
            assert f"## {dotted}\n" in text
            continue
        row = next((line for line in text.splitlines() if line.startswith(f"| `{dotted}` |")), None)
        assert row is not None, dotted
        assert key.doc.replace("|", "\\|") in row


def test_cli_prints_the_reference():
    proc = run_launch(["schema", "--markdown"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == recipe_reference()


def test_recipe_types_are_generated_from_the_schema():
    committed = (ROOT / "launcher" / "recipe" / "types.py").read_text()
    assert committed == recipe_typeddicts(), (
        "launcher/recipe/types.py is stale: run `launch schema --typeddict > launcher/recipe/types.py`"
    )


def test_every_key_is_typed_where_its_section_is():
    """Each schema key is a field of its section's TypedDict, NotRequired exactly where a selector decides."""
    import launcher.recipe.types as types

    classes = {name: cls for name, cls in vars(types).items() if isinstance(cls, type) and name.endswith("Section")}
    for dotted, key in all_keys().items():
        if "." not in dotted:
            assert dotted in types.Recipe.__annotations__, dotted
            continue
        section, name = dotted.rsplit(".", 1)
        cls = classes["".join(p.capitalize() for p in section.split(".")[-1].split("_")) + "Section"]
        annotation = cls.__annotations__[name].__forward_arg__  # the module's annotations are never evaluated
        selected = annotation.startswith("NotRequired[")
        assert selected == (key.only_for is not None), (dotted, annotation)
        value_type = annotation.removeprefix("NotRequired[").removesuffix("]") if selected else annotation
        assert value_type.endswith(" | None") == key.nullable, (dotted, annotation)


def test_cli_prints_the_types():
    proc = run_launch(["schema", "--typeddict"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == recipe_typeddicts()
