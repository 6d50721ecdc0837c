"""Plan files cannot be swapped or redirected by another local user (issue 14 point 13): a node's
plan copy lives in a private 0700 folder of the user, is never written through a planted
symlink, and the worker runs only a plan file the user owns and nobody else can write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_launch

TINY = "recipes/sft_tiny.yaml"


def _node1(tmp_path: Path) -> tuple[list[str], dict, Path]:
    """argv and env of a node-1 `launch` whose temp dir is tmp_path/tmp, and where its plan copy goes."""
    out = (tmp_path / "run").resolve()
    args = [
        TINY,
        f"output.dir={out}",
        "distributed.nnodes=2",
        "distributed.nproc_per_node=1",
        "distributed.master_addr=127.0.0.1",
        f"distributed.master_port={free_port()}",
        "--node-rank",
        "1",
    ]
    temp = tmp_path / "tmp"
    temp.mkdir()
    digest = hashlib.sha1(str(out).encode()).hexdigest()[:12]
    copy = temp / f"launcher-plans-{os.getuid()}" / digest / "plan-node1.json"
    return args, {**os.environ, "TMPDIR": str(temp), "CUDA_VISIBLE_DEVICES": ""}, copy


def _until_plan_written(args: list[str], env: dict) -> str:
    """Start node 1, read its output up to the line naming its plan copy (written by then), stop it.
    Node 0 never comes, so its rendezvous would only wait: the whole process group is stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    guard = threading.Timer(120, os.killpg, (proc.pid, signal.SIGKILL))
    guard.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "plan: " in line:
                break
    finally:
        guard.cancel()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return "".join(seen)


@pytest.mark.multiproc
def test_a_planted_symlink_is_not_followed_and_the_folder_is_private(tmp_path):
    args, env, copy = _node1(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    copy.parent.mkdir(parents=True, mode=0o700)
    copy.parent.parent.chmod(0o700)
    copy.symlink_to(victim)  # where the plan copy goes, and where its temp file used to, both at a file of the user's
    copy.with_suffix(".json.tmp").symlink_to(victim)
    output = _until_plan_written(args, env)
    assert f"plan: {copy}" in output, output[-3000:]
    assert victim.read_text() == "precious\n", "the plan was written through the symlink"
    assert not copy.is_symlink() and json.loads(copy.read_text())["world"]["nnodes"] == 2
    for folder in (copy.parent, copy.parent.parent):
        info = os.lstat(folder)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)


@pytest.mark.multiproc
def test_a_fresh_plan_copy_folder_is_created_private(tmp_path):
    args, env, copy = _node1(tmp_path)
    output = _until_plan_written(args, env)
    assert f"plan: {copy}" in output, output[-3000:]
    assert stat.S_IMODE(os.lstat(copy.parent.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(copy.parent).st_mode) == 0o700


@pytest.mark.multiproc
@pytest.mark.parametrize("plant", ["symlink", "open"])
def test_a_plan_copy_folder_someone_else_could_enter_is_refused(tmp_path, plant):
    args, env, copy = _node1(tmp_path)
    folder = copy.parent.parent
    if plant == "symlink":  # another user's folder behind the predictable name
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.mkdir()
        folder.chmod(0o777)
    proc = run_launch(args, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"plan copy folder {folder}" in proc.stderr and "Fix: remove it" in proc.stderr
    assert not list((tmp_path / "elsewhere").rglob("*")) if plant == "symlink" else not copy.exists()


def _worker(plan: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launcher.worker", "--plan", str(plan)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )


@pytest.mark.multiproc
@pytest.mark.parametrize("case", ["other owner", "world-writable", "group-writable", "symlink"])
def test_the_worker_refuses_a_plan_file_that_is_not_the_users(tmp_path, case):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"output_dir": str(tmp_path / "out")}))
    plan.chmod(0o644)
    if case == "other owner":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another uid needs root")
        os.chown(plan, 65534, 65534)  # nobody
    elif case == "world-writable":
        plan.chmod(0o646)
    elif case == "group-writable":
        plan.chmod(0o664)
    else:
        link = tmp_path / "link.json"
        link.symlink_to(plan)
        plan = link
    proc = _worker(plan)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"[launcher] plan error: --plan {plan}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing may run from a refused plan"


@pytest.mark.multiproc
@pytest.mark.parametrize("version", ["next", "missing"])
def test_the_worker_refuses_a_plan_another_launcher_version_wrote(tmp_path, version):
    from launcher.plan import PLAN_VERSION, build_plan
    from launcher.recipe.load import load_recipe

    plan = build_plan(load_recipe(ROOT / TINY, [f"output.dir={tmp_path / 'out'}"]), cwd=str(ROOT))
    if version == "next":  # a newer launcher's plan
        plan["version"] = PLAN_VERSION + 1
    else:  # a plan from before plan.json carried its version
        del plan["version"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan, indent=2))
    proc = _worker(path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    shown = PLAN_VERSION + 1 if version == "next" else None
    assert f"[launcher] plan error: --plan {path} has plan version {shown}, but this launcher reads version " in (
        proc.stderr
    )
    assert "Fix: re-run `launch` with this launcher to write a new plan" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists(), "nothing may run from a refused plan"
