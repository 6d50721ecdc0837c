"""One error hierarchy (launcher/errors.py): user errors exit 2 with one line, in the CLI and in
the worker; a bug anywhere else keeps its traceback instead of passing for a user error."""

from __future__ import annotations

import pytest

from launcher import cli
from launcher.errors import CheckpointError
from tests.conftest import free_port, run_launch


def _verb(name: str, tmp_path) -> list[str]:
    out = str(tmp_path / "out")
    if name == "consolidate":
        return ["consolidate", str(tmp_path / "checkpoint-3"), "--out", out]
    return ["merge", "--base", "builtin:tiny-qwen2", "--adapter", str(tmp_path / "adapter"), "--out", out]


@pytest.mark.unit
@pytest.mark.parametrize("verb", ["consolidate", "merge"])
@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug")])
def test_a_bug_inside_consolidate_or_merge_is_not_reported_as_a_user_error(verb, bug, tmp_path, monkeypatch):
    module = __import__(f"launcher.checkpoint.{verb}", fromlist=[verb])

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(module, verb, broken)
    with pytest.raises(type(bug)):  # the traceback reaches the user, not "launch ...: error: a bug", exit 2
        cli.main(_verb(verb, tmp_path))


@pytest.mark.unit
@pytest.mark.parametrize("verb", ["consolidate", "merge"])
def test_a_checkpoint_error_inside_consolidate_or_merge_is_one_line_and_exit_2(verb, tmp_path, monkeypatch, capsys):
    module = __import__(f"launcher.checkpoint.{verb}", fromlist=[verb])

    def refuse(*args, **kwargs):
        raise CheckpointError("the checkpoint is damaged. Fix: restore it")

    monkeypatch.setattr(module, verb, refuse)
    assert cli.main(_verb(verb, tmp_path)) == 2
    assert capsys.readouterr().err == f"launch {verb}: error: the checkpoint is damaged. Fix: restore it\n"


@pytest.mark.multiproc
def test_a_stage_data_error_in_the_worker_is_one_marked_line_and_exit_2(tmp_path, warm):
    # every example held out for evaluation: the sft stage refuses once the data is built, in every rank
    proc = run_launch(
        [
            "recipes/sft_tiny.yaml",
            "data.val_size=0.9999",
            f"output.dir={tmp_path / 'run'}",
            f"distributed.master_port={free_port()}",
        ],
        timeout=900,
    )
    assert proc.returncode != 0
    line = "[launcher] data error: data.val_size=0.9999 leaves no training examples out of "
    assert line in proc.stderr, proc.stderr[-3000:]
    assert "failed first; its last lines" in proc.stderr  # ranklog found the failing rank by the worker's marker
    logs = sorted((tmp_path / "run" / "logs").glob("rank-*.log"))
    assert len(logs) == 2
    for log in logs:  # each rank: the one line, no traceback (torchrun's own report is not ours)
        text = log.read_text()
        assert text.count(line) == 1 and "Traceback" not in text, text[-3000:]
