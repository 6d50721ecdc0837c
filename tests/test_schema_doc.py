"""docs/recipe.md is the schema's own rendering: a key added, removed or changed in
launcher/recipe/schema.py without regenerating the file fails here."""

from __future__ import annotations

import pytest

from launcher.recipe.schema import all_keys
from launcher.recipe.schema_doc import recipe_reference
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
