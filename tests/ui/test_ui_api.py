"""`launch ui`'s JSON API, over HTTP against a server in this process: the same schema, refusals and
plan as the CLI, the token, paths confined to the root, and the runs a real tiny run's files show."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from launcher import registry
from launcher.errors import STOPPED
from launcher.plan import format_plan
from tests.conftest import ROOT, SHORT_RUN, free_port, run_launch
from tests.ui.ui_helpers import ui_server

RECIPE = f"""model:
  path: builtin:tiny-qwen2
  dtype: fp32
data:
  datasets: [demo_sft]
  dataset_dir: {ROOT / "data"}
distributed:
  master_port: 29533
"""


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def streamed(url: str, body: dict) -> list[dict]:
    """The JSON lines of a `"stream": true` request, as they came: the partial outputs, then the answer."""
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=120) as response:
        return [json.loads(line) for line in response]


def raw_get(base: str, path: str) -> int:
    """GET with the path sent as written (urllib and curl fold `..` away before sending)."""
    connection = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)
    connection.request("GET", path)
    return connection.getresponse().status


def cli_in(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`launch ARGS` typed in the root folder, as the page's child `launch` runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "launcher.cli", *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.unit
def test_schema_is_launch_schema(tmp_path):
    with ui_server(tmp_path) as base:
        status, schema = call(base + "/api/schema")
    assert status == 200
    assert schema == json.loads(run_launch(["schema"]).stdout)


@pytest.mark.unit
def test_validate_refuses_a_bad_key_with_the_clis_message(tmp_path):
    bad = RECIPE.replace("  dtype: fp32", "  dtyp: fp32")
    with ui_server(tmp_path) as base:
        status, answer = call(base + "/api/validate", {"name": "bad", "yaml": bad})
        good_status, good = call(base + "/api/validate", {"name": "good", "yaml": RECIPE})
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_text(bad)
    cli = cli_in(tmp_path, "plan", "recipes/bad.yaml")
    assert status == 400 and "model.dtyp" in answer["error"]
    assert cli.returncode == 2 and cli.stderr.strip() == f"launch: error: {answer['error']}"
    assert good_status == 200 and good["recipe"]["model"]["dtype"] == "fp32"
    assert not (tmp_path / "recipes" / "good.yaml").exists()  # validating writes nothing


@pytest.mark.unit
def test_plan_is_launch_plans_text(tmp_path):
    recipe = RECIPE + f"output:\n  dir: {tmp_path / 'outputs' / 'tiny'}\n"
    with ui_server(tmp_path) as base:
        status, answer = call(base + "/api/plan", {"name": "tiny", "yaml": recipe})
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny.yaml").write_text(recipe)
    cli = cli_in(tmp_path, "plan", "recipes/tiny.yaml")
    assert cli.returncode == 0, cli.stderr
    assert status == 200 and answer["text"] == cli.stdout.rstrip("\n")


@pytest.mark.unit
def test_every_request_needs_the_token(tmp_path):
    with ui_server(tmp_path, token="s3cret") as base:
        assert call(base + "/api/schema")[0] == 401
        assert call(base + "/api/schema", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(base + "/api/validate", {"yaml": RECIPE})[0] == 401
        assert raw_get(base, "/") == 401
        assert call(base + "/api/schema", headers={"Authorization": "Bearer s3cret"})[0] == 200
        with urllib.request.urlopen(base + "/?token=s3cret", timeout=30) as page:  # the URL `launch ui` prints
            cookie = page.headers["Set-Cookie"].split(";")[0]
        assert call(base + "/api/runs", headers={"Cookie": cookie})[0] == 200


@pytest.mark.unit
def test_a_reachable_host_without_a_token_is_refused():
    proc = run_launch(["ui", "--host", "0.0.0.0", "--port", str(free_port())], timeout=60)
    assert proc.returncode == 2
    assert "--host 0.0.0.0" in proc.stderr and "Fix: add --token" in proc.stderr


@pytest.mark.unit
def test_paths_stay_under_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "outputs").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "plan.json").write_text("{}")
    (root / "outputs" / "link").symlink_to(outside)
    with ui_server(root) as base:
        assert raw_get(base, "/api/runs/../elsewhere/log") == 403
        assert raw_get(base, "/api/runs/%2E%2E/elsewhere/log") == 403
        assert raw_get(base, f"/api/runs/{outside}/log") == 403
        assert raw_get(base, "/api/runs/outputs/link/log") == 403
        status, answer = call(base + "/api/start", {"name": "../escape", "yaml": RECIPE})
        _, runs = call(base + "/api/runs")
    assert status == 400 and "recipe name" in answer["error"]
    assert not (tmp_path / "escape.yaml").exists() and not (root / "recipes").exists()
    assert runs["runs"] == []  # the symlinked run is not followed out of the root


def _copy_run(source: Path, target: Path) -> Path:
    """The files a run's status is read from, copied so they can be changed as a stop or failure leaves them."""
    target.mkdir(parents=True)
    shutil.copy(source / "plan.json", target)
    shutil.copy(source / "trainer_log.jsonl", target)
    shutil.copytree(source / "logs", target / "logs")
    return target


@pytest.mark.multiproc
def test_runs_show_a_real_runs_status_steps_and_loss(tiny_run, tmp_path):
    run = tiny_run(*SHORT_RUN)
    rows = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    stopped = _copy_run(run, tmp_path / "outputs" / "stopped")
    (stopped / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    with open(stopped / "logs" / "rank-0.log", "a") as log:
        log.write(f"{STOPPED} stopped by SIGTERM\n")
    failed = _copy_run(run, tmp_path / "outputs" / "failed")
    (failed / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    with open(failed / "logs" / "rank-1.log", "a") as log:
        log.write("Traceback (most recent call last):\nRuntimeError: boom\n")
    shutil.copytree(run, tmp_path / "outputs" / "done", ignore=shutil.ignore_patterns("checkpoint-*"))
    with ui_server(tmp_path) as base:
        _, listing = call(base + "/api/runs")
        status, detail = call(base + "/api/runs/outputs/done/log")
        _, failure = call(base + "/api/runs/outputs/failed/log")
    runs = {r["name"]: r for r in listing["runs"]}
    assert {name: r["status"] for name, r in runs.items()} == {
        "outputs/done": "finished",
        "outputs/failed": "failed",
        "outputs/stopped": "stopped",
    }
    done = runs["outputs/done"]
    assert (done["stage"], done["method"], done["model"]) == ("sft", "lora", "builtin:tiny-qwen2")
    assert (done["step"], done["total_steps"], done["loss"]) == (6, 6, [r for r in rows if "loss" in r][-1]["loss"])
    assert runs["outputs/stopped"]["step"] == rows[2]["step"]
    assert status == 200 and detail["rows"] == rows
    assert "rank-0" in detail["ranks"] and detail["ranks"]["rank-0"].strip()
    assert detail["failure"] is None
    assert detail["plan"] == format_plan(json.loads((run / "plan.json").read_text()))  # the plan it used
    assert "rank-1 failed first" in failure["failure"] and "RuntimeError: boom" in failure["failure"]


@pytest.mark.unit
def test_a_refusal_names_the_field_it_belongs_beside(tmp_path):
    bad_value = RECIPE + "train:\n  lr: -1\n"
    unreadable = RECIPE + "train: [\n"
    with ui_server(tmp_path) as base:
        status, answer = call(base + "/api/validate", {"name": "bad", "yaml": bad_value})
        _, plan = call(base + "/api/plan", {"name": "bad", "yaml": bad_value})
        _, broken = call(base + "/api/validate", {"name": "bad", "yaml": unreadable})
    assert status == 400 and answer["key"] == "train.lr" and "Fix:" in answer["error"]
    assert plan == answer  # plan and start refuse through the same loader
    assert broken["key"] is None and "unreadable YAML" in broken["error"]  # no field to show it beside


@pytest.mark.unit
def test_the_form_knows_the_stage_and_method_specific_keys(tmp_path):
    with ui_server(tmp_path) as base:
        _, form = call(base + "/api/form")
    only_for = form["only_for"]
    for selector, names, spec_of, section in (
        ("stage", registry.STAGES, registry.stage_spec, "train."),
        ("method.name", registry.METHODS, registry.method_spec, "method."),
    ):
        for name in names:
            for key in spec_of(name).keys:
                assert only_for[section + key][0] == selector and name in only_for[section + key][1], key
    assert "train.lr" not in only_for and "method.name" not in only_for  # keys of every stage and method


@pytest.mark.unit
def test_a_loaded_recipe_file_fills_the_form_with_its_own_values(tmp_path):
    """The form's values, written back as the page writes its YAML, are the file's recipe."""
    text = (ROOT / "recipes" / "sft_tiny.yaml").read_text()
    with ui_server(tmp_path) as base:
        status, answer = call(base + "/api/parse", {"file": "sft_tiny.yaml", "yaml": text})
        _, broken = call(base + "/api/parse", {"file": "x.yaml", "yaml": "model: [\n"})
    assert status == 200
    rebuilt: dict = {}
    for dotted, value in answer["values"].items():
        *sections, name = dotted.split(".")
        node = rebuilt
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = yaml.safe_load(value)
    assert rebuilt == yaml.safe_load(text)
    assert "x.yaml:" in broken["error"] and "unreadable YAML" in broken["error"]


@pytest.mark.unit
def test_export_chat_and_eval_stay_under_the_root_and_on_runs(tmp_path):
    run = tmp_path / "outputs" / "run"
    run.mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps({"recipe": {"model": {"path": "builtin:tiny-qwen2"}}}))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("the user's")
    with ui_server(tmp_path) as base:
        escape = call(base + "/api/merge", {"run": "outputs/run", "out": "../out"})
        outside_run = call(base + "/api/chat", {"run": str(run), "prompt": "hi"})
        not_a_run = call(base + "/api/merge", {"run": "taken", "out": "merged"})
        taken = call(base + "/api/merge", {"run": "outputs/run", "out": "taken"})
        bad_dtype = call(base + "/api/merge", {"run": "outputs/run", "out": "merged", "dtype": "int3"})
        bad_bits = call(base + "/api/chat", {"run": "outputs/run", "prompt": "hi", "load_in": "2bit"})
        no_checkpoint = call(base + "/api/consolidate", {"run": "outputs/run", "checkpoint": "../x", "out": "c"})
        unsaved = call(base + "/api/eval", {"name": "tiny", "out": "eval/tiny"})
    assert escape[0] == 403 and outside_run[0] == 403
    assert not_a_run[0] == 400 and "no run there" in not_a_run[1]["error"]
    assert taken[0] == 400 and "already holds files" in taken[1]["error"]
    assert (tmp_path / "taken" / "file").read_text() == "the user's"
    assert bad_dtype[0] == 400 and "int3" in bad_dtype[1]["error"]
    assert bad_bits[0] == 400 and "2bit" in bad_bits[1]["error"]
    assert no_checkpoint[0] == 400 and "not one of the run's" in no_checkpoint[1]["error"]
    assert unsaved[0] == 400 and "Save the recipe" in unsaved[1]["error"]
    assert not (tmp_path / "merged").exists() and not (tmp_path / "c").exists() and not (tmp_path / "eval").exists()


@pytest.mark.multiproc
def test_consolidate_writes_a_runs_zero_checkpoint_as_an_adapter(tiny_run, tmp_path):
    run = tiny_run(*SHORT_RUN)
    shutil.copytree(run, tmp_path / "outputs" / "tiny")
    request = {"run": "outputs/tiny", "checkpoint": "checkpoint-6", "out": "adapters/tiny"}
    with ui_server(tmp_path) as base:
        *partials, answer = streamed(base + "/api/consolidate", request)  # its output lines as they come
        again = call(base + "/api/consolidate", request)
    assert answer["ok"] is True, answer
    assert answer["out"] == "adapters/tiny" and "consolidated" in answer["output"]
    assert partials and all(answer["output"].startswith(p["partial"]["output"]) for p in partials)
    assert (tmp_path / "adapters" / "tiny" / "adapter_config.json").is_file()
    assert again[0] == 400  # never over what it wrote


@pytest.mark.multiproc
def test_a_chat_reply_grows_token_by_token_into_the_non_streamed_reply(tiny_run, tmp_path):
    from launcher.infer.chat import Sampling, chat_template, load_for_chat, reply

    run = tmp_path / "outputs" / "tiny"
    shutil.copytree(tiny_run(*SHORT_RUN), run)
    with ui_server(tmp_path) as base:
        *partials, answer = streamed(
            base + "/api/chat", {"run": "outputs/tiny", "prompt": "1+1=", "max_new_tokens": 24}
        )
    model, tokenizer = load_for_chat("builtin:tiny-qwen2", str(run))
    template = chat_template("builtin:tiny-qwen2", str(run))[0]
    whole = reply(model, tokenizer, [{"role": "user", "content": "1+1="}], Sampling(24), template)
    assert answer == {"ok": True, "reply": whole} and whole
    shown = [event["partial"]["reply"] for event in partials]
    assert all(whole.startswith(text) for text in shown)
    assert any(0 < len(text) < len(whole) for text in shown), shown  # seen before the child ended


def _fake_run(root: Path, name: str, steps: int, checkpoint: bool) -> Path:
    """A run folder as a stop leaves it: plan.json naming its recipe file, `steps` of 4 logged, checkpoint-2."""
    folder = root / "outputs" / name
    (folder / "checkpoint-2").mkdir(parents=True)
    if checkpoint:
        (folder / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    recipe = root / "recipes" / f"{name}.yaml"
    recipe.parent.mkdir(exist_ok=True)
    recipe.write_text(RECIPE + f"train:\n  max_steps: 4\noutput:\n  dir: outputs/{name}\n")
    (folder / "plan.json").write_text(json.dumps({"recipe": {"stage": "sft"}, "recipe_file": str(recipe)}))
    rows = [{"step": step, "total_steps": 4, "loss": 1.0} for step in range(1, steps + 1)]
    (folder / "trainer_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.unit
def test_resume_starts_a_stopped_runs_recipe_with_resume_auto_on_its_folder(tmp_path):
    _fake_run(tmp_path, "stopped", 2, checkpoint=True)
    _fake_run(tmp_path, "bare", 1, checkpoint=False)
    _fake_run(tmp_path, "done", 4, checkpoint=True)
    busy = _fake_run(tmp_path, "busy", 2, checkpoint=True)
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(busy / "plan.json")])
    try:
        with ui_server(tmp_path) as base:
            status, answer = call(base + "/api/resume", {"run": "outputs/stopped"})
            twice = call(base + "/api/resume", {"run": "outputs/stopped"})
            refusals = {
                name: call(base + "/api/resume", {"run": f"outputs/{name}"}) for name in ("bare", "done", "busy")
            }
            deadline = time.monotonic() + 60
            while (job := call(base + "/api/runs")[1]["jobs"][0])["exit_code"] is None:
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
    finally:
        rank.kill()
        rank.wait()
    assert status == 200, answer
    assert answer["command"][-3:] == ["recipes/stopped.yaml", "train.resume=auto", "output.dir=outputs/stopped"]
    assert twice[0] == 400 and "stopped is running" in twice[1]["error"]  # one run per output folder
    assert refusals["bare"][0] == 400 and "no checkpoint" in refusals["bare"][1]["error"]
    assert refusals["done"][0] == 400 and "already complete" in refusals["done"][1]["error"]
    assert refusals["busy"][0] == 400 and "outputs/busy is running" in refusals["busy"][1]["error"]
    # the CLI looked for that folder's checkpoint to resume: this hand-made one has no launcher manifest
    assert job["exit_code"] == 2 and "stopped/checkpoint-2 has no checksum manifest" in job["console"], job
