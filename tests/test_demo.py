"""`make demo` shows that the model learned: after the demo recipe's run, the tuned model answers
its training prompts with the answers the data taught, and the untuned base does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port, run_launch

pytestmark = pytest.mark.multiproc


def test_demo_prints_before_and_after_and_the_tuned_answers_match(tmp_path, warm):
    out = tmp_path / "demo"
    proc = run_launch(["recipes/demo_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    recipe = tmp_path / "demo.yaml"  # the demo reads output.dir from its recipe
    recipe.write_text((ROOT / "recipes" / "demo_tiny.yaml").read_text().replace("outputs/demo_tiny", str(out)))
    code = (
        "import json, sys; from launcher.demo import before_and_after; from launcher.recipe import load_recipe; "
        "print(json.dumps(before_and_after(load_recipe(sys.argv[1]), 3)))"
    )
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-c", code, str(recipe)], cwd=ROOT, check=True, capture_output=True, text=True, timeout=300
        ).stdout
    )
    assert len(rows) == 3
    for row in rows:
        assert row["after_match"] >= 0.9, row
        assert row["before_match"] < 0.5, row
    shown = subprocess.run(
        [sys.executable, "-m", "launcher.demo", str(recipe), "--prompts", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "before tuning" in shown.stdout and "after tuning" in shown.stdout
    assert rows[0]["taught"] in shown.stdout
