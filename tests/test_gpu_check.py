"""bench/gpu_check.py, which runs on a GPU machine with no internet: --dry-run refuses with the
missing wheels named (exit 2) and, with every pinned wheel beside it, prints the plan and runs nothing."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench.gpu_check import PACKAGES  # noqa: E402

pytestmark = pytest.mark.unit


def _dry_run(wheels) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--wheels", str(wheels)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_dry_run_names_the_missing_wheels_and_the_fix(tmp_path):
    proc = _dry_run(tmp_path)
    assert proc.returncode == 2
    assert "deepspeed==" in proc.stderr and "liger-kernel==" in proc.stderr and "make gpu-wheels" in proc.stderr


def test_dry_run_with_every_wheel_prints_the_plan(tmp_path):
    for spec in PACKAGES:  # empty but well-named wheels: the dry run checks presence and versions only
        name, version = spec.split("==")
        with zipfile.ZipFile(tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w"):
            pass
    proc = _dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(PACKAGES)} wheels ready" in proc.stdout
    assert "pytest -m gpu" in proc.stdout and "gpu_throughput.py" in proc.stdout
    (tmp_path / "trl-1.16.0-py3-none-any.whl").unlink()  # one missing again, or another version: refused
    (tmp_path / "trl-0.1-py3-none-any.whl").touch()
    assert _dry_run(tmp_path).returncode == 2
