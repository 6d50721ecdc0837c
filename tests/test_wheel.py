"""The package as users install it: a wheel built from the checkout, installed into a fresh venv,
used from a directory that is not the checkout (`launch plan`, `launch schema`, a 2-step run).

The fresh venv gets the wheel alone (`--no-deps`); the dependencies come from this test run's
environment through a .pth line, so the test costs seconds instead of a torch install, and the
`launcher` that runs is the wheel's (checked), never the checkout's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the built wheel."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(base / "dist"),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    wheel = next((base / "dist").glob("llm_launcher-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture()
def user_dir(tmp_path) -> Path:
    """A user's project folder: their own recipe and data, no checkout in sight."""
    shutil.copytree(ROOT / "data", tmp_path / "data")
    (tmp_path / "recipe.yaml").write_text((ROOT / "recipes" / "sft_tiny.yaml").read_text())
    return tmp_path


def _run(bin_dir: Path, cwd: Path, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    from launcher.plan import torch_extensions_dir

    # DeepSpeed's CPU op compiled once per test session (conftest's warm), not again for this venv
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TORCH_EXTENSIONS_DIR"] = torch_extensions_dir()
    return subprocess.run(
        [str(bin_dir / "launch"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.multiproc
def test_wheel_imports_its_own_package(installed, user_dir):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import launcher; print(launcher.__file__)"],
        cwd=user_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert str(installed.parent) in where and str(ROOT) not in where


@pytest.mark.multiproc
def test_wheel_plans_a_deepspeed_recipe_and_prints_the_schema(installed, user_dir):
    for zero in (0, 2, 3):
        proc = _run(installed, user_dir, "plan", "recipe.yaml", f"distributed.zero={zero}")
        assert proc.returncode == 0, proc.stderr
        assert '"zero_optimization"' in proc.stdout and f'"stage": {zero}' in proc.stdout
    proc = _run(installed, user_dir, "schema")
    assert proc.returncode == 0, proc.stderr
    assert "distributed" in json.loads(proc.stdout)["properties"]


@pytest.mark.multiproc
def test_wheel_trains_two_steps_from_another_directory(installed, user_dir, warm):
    proc = _run(
        installed,
        user_dir,
        "recipe.yaml",
        "train.max_steps=2",
        "distributed.zero=2",
        f"distributed.master_port={free_port()}",
        "output.dir=out",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (user_dir / "out" / "adapter_model.safetensors").is_file()
    assert json.loads((user_dir / "out" / "trainer_state.json").read_text())["global_step"] == 2
