"""bench/gpu_check.py, which runs on a GPU machine with no internet: --dry-run refuses with the
missing wheels named (exit 2) and, with every pinned wheel beside it, prints the plan and runs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench.gpu_check import PACKAGES  # noqa: E402

pytestmark = pytest.mark.unit


def _dry_run(wheels, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--wheels", str(wheels)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _every_wheel(folder) -> None:
    for spec in PACKAGES:  # empty but well-named wheels: the dry run checks presence and versions only
        name, version = spec.split("==")
        with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w"):
            pass


def test_dry_run_names_the_missing_wheels_and_the_fix(tmp_path):
    proc = _dry_run(tmp_path)
    assert proc.returncode == 2
    assert "deepspeed==" in proc.stderr and "liger-kernel==" in proc.stderr and "make gpu-wheels" in proc.stderr


def test_dry_run_with_every_wheel_prints_the_plan(tmp_path):
    _every_wheel(tmp_path)
    proc = _dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(PACKAGES)} wheels ready" in proc.stdout
    assert "pytest -m gpu" in proc.stdout and "gpu_throughput.py" in proc.stdout
    (tmp_path / "trl-1.16.0-py3-none-any.whl").unlink()  # one missing again, or another version: refused
    (tmp_path / "trl-0.1-py3-none-any.whl").touch()
    assert _dry_run(tmp_path).returncode == 2


def _machine_with(folder, name: str, version: str) -> dict:
    """An environment whose installed `name` reports `version` (its metadata first on the path)."""
    info = folder / "site" / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return {**os.environ, "PYTHONPATH": str(folder / "site")}


def test_dry_run_brings_transformers_and_refuses_an_image_package_out_of_range(tmp_path):
    """The GPU image's transformers 5.17 is older than the code needs (pyproject: >= 5.23): the
    pinned transformers wheel goes in beside it, so the image's own does not block the check; a
    package the check keeps from the image (accelerate) out of pyproject's range is refused."""
    assert "transformers==5.24.0" in PACKAGES
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _every_wheel(wheels)
    proc = _dry_run(wheels, _machine_with(tmp_path / "image", "transformers", "5.17.0"))
    assert proc.returncode == 0 and f"{len(PACKAGES)} wheels ready" in proc.stdout, proc.stderr
    proc = _dry_run(wheels, _machine_with(tmp_path / "old", "accelerate", "0.20.0"))
    assert proc.returncode == 2 and "accelerate 0.20.0 (the project needs" in proc.stderr, proc.stderr
