"""Defaults in one place (issue 18): a recipe default that library functions fall back on is
read from the schema (launcher/data/defaults.py), and the dtype names map to torch in one helper."""

from __future__ import annotations

import inspect
import re

import pytest

from launcher.recipe.schema import SCHEMA
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

# each default as call sites restated it before, and the one module that may hold it (None: none)
RESTATED = [
    (r"timeout_s: float = \d", None),  # the data-cache wait: defaults.WAIT_S
    (r"template: str = \"auto\"", None),  # model.template: defaults.TEMPLATE
    (r"\"on_bad_row\", \"error\"", None),  # data.on_bad_row: BadRows.of
    (r"\"bf16\": torch\.bfloat16", "launcher/model/dtypes.py"),  # dtypes.torch_dtype
]


@pytest.mark.parametrize(("pattern", "home"), RESTATED)
def test_no_call_site_restates_a_default(pattern, home):
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "launcher").rglob("*.py"))
        if str(path.relative_to(ROOT)) != home
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not found, (
        f"{pattern} restated at {found}; take it from launcher/data/defaults.py or launcher/model/dtypes.py"
    )


def test_the_fallbacks_are_the_schemas_defaults():
    from launcher.data.bad_rows import BadRows
    from launcher.data.pipeline import sft_data

    params = inspect.signature(sft_data).parameters
    assert params["template"].default == SCHEMA["model"]["template"].default
    assert params["timeout_s"].default == 60 * SCHEMA["distributed"]["timeout_minutes"].default
    assert BadRows.of({}).mode == SCHEMA["data"]["on_bad_row"].default
    assert BadRows.of({"on_bad_row": "skip"}).mode == "skip"


def test_torch_dtype_maps_the_recipes_dtype_names():
    import torch

    from launcher.model.dtypes import torch_dtype

    assert [torch_dtype(name) for name in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    with pytest.raises(KeyError):
        torch_dtype("auto")
