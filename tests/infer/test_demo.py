"""`make demo` shows that the model learned: after the demo recipe's run, the tuned model answers
its training prompts with the answers the data taught, and the untuned base does not."""

from __future__ import annotations

import json
import re
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
    shown = subprocess.run(
        [sys.executable, "-m", "launcher.infer.demo", str(recipe), "--prompts", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    # per prompt: the answer the data taught, then the base's and the tuned model's with their match to it
    taught = re.findall(r"taught by the data : (.*)", shown.stdout)
    before = [int(m) for m in re.findall(r"before tuning +: .*\((\d+)% match\)", shown.stdout)]
    after = [int(m) for m in re.findall(r"after tuning +: .*\((\d+)% match\)", shown.stdout)]
    assert len(taught) == len(before) == len(after) == 3, shown.stdout
    assert all(match >= 90 for match in after) and all(match < 50 for match in before), shown.stdout
    answers = [row["output"] for row in json.loads((ROOT / "data" / "demo_sft.json").read_text())]
    assert taught == answers[:3]
