"""The page in a real browser: headless Chromium (Debian's package, installed by .ci/services.sh) loads
it, runs its JS, and the form it builds from /api/schema holds every recipe key."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from launcher.recipe.schema import all_keys
from tests.ui.ui_helpers import ui_server

pytestmark = pytest.mark.services


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:  # never skipped: CI must run this
        pytest.fail("chromium not installed. Fix: run .ci/services.sh as root (it apt-get installs chromium)")
    return found


def rendered(url: str, tmp_path) -> str:
    """The DOM after the page's scripts ran (virtual time lets its fetches finish before the dump)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_form_has_every_schema_key(tmp_path):
    with ui_server(tmp_path, token="t0ken") as base:
        dom = rendered(f"{base}/?token=t0ken", tmp_path)
    fields = set(re.findall(r'name="([^"]+)"', dom))
    keys = {key for key, spec in all_keys().items() if spec.kind != "section"}
    assert {"model.path", "train.lr", "stage", "method.name"} <= fields
    assert keys - fields == set(), "schema keys missing from the form"
    assert "launch recipes/recipe.yaml" in dom  # the command the empty form equals
