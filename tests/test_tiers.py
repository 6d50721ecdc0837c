"""The test tiers stay complete: a test without exactly one of the tiers of pyproject.toml (unit, multiproc,
services, gpu) fails collection, so `make test-fast` (-m unit) never silently loses or gains a slow test."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def _collect(tmp_path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text("import pytest\n\n" + body)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "tests.conftest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            str(tmp_path / "test_probe.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_test_without_a_tier_fails_collection_by_name(tmp_path):
    proc = _collect(tmp_path, "def test_untiered():\n    pass\n")
    assert proc.returncode != 0
    assert "exactly one tier" in proc.stdout + proc.stderr and "test_untiered (none)" in proc.stdout + proc.stderr


def test_two_tiers_fail_and_one_tier_collects(tmp_path):
    two = _collect(tmp_path, "@pytest.mark.unit\n@pytest.mark.multiproc\ndef test_both():\n    pass\n")
    assert two.returncode != 0 and "test_both (multiproc, unit)" in two.stdout + two.stderr
    one = _collect(tmp_path, "pytestmark = pytest.mark.multiproc\n\ndef test_one():\n    pass\n")
    assert one.returncode == 0, one.stdout + one.stderr
    assert "1 test collected" in one.stdout


def test_an_unregistered_tier_name_is_refused(tmp_path):
    proc = _collect(tmp_path, "@pytest.mark.unti\ndef test_typo():\n    pass\n")
    assert proc.returncode != 0 and "'unti' not found in `markers`" in proc.stdout + proc.stderr
