"""Nothing lost: output.overwrite removes only a run the launcher created, never an input, a user's
folder, the project, home or /; every refusal comes before anything is removed; no command writes
over a file it reads. Through the real CLI; refusals start no training, one short real run checks
that a previous run survives refused relaunches and is then replaced (with a foreign file kept)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_launch

TINY = "recipes/sft_tiny.yaml"
# bounds the run a refusal would otherwise start (only on code that fails to refuse)
QUICK = ("train.max_steps=1", "train.save_steps=1000")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder, by relative path, with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _launch(*args: str, env: dict | None = None):
    return run_launch([*args, f"distributed.master_port={free_port()}"], timeout=600, env=env)


def _refused(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in message, message


def _refused_untouched(folder: Path, words: tuple[str, ...], *args: str, env: dict | None = None) -> None:
    """launch with args is refused naming each of words, and every file under folder is as it was."""
    before = _snapshot(folder)
    _refused(_launch(*args, env=env), *words)
    assert _snapshot(folder) == before


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    """A local HF model folder (config.json, weights, tokenizer): a copy of the builtin model."""
    from launcher.model.builtin import materialize

    folder = tmp_path_factory.mktemp("hf") / "tiny-model"
    shutil.copytree(materialize("builtin:tiny-qwen2"), folder)
    assert (folder / "config.json").is_file()
    return folder


@pytest.mark.multiproc
def test_local_model_folder_as_output_dir_is_refused(local_model):
    args = (f"model.path={local_model}", f"output.dir={local_model}", "output.overwrite=true", *QUICK)
    _refused_untouched(local_model, ("is model.path", "Fix:"), TINY, *args)


@pytest.mark.multiproc
def test_builtin_models_materialized_folder_as_output_dir_is_refused(local_model, tmp_path):
    """model.path=builtin:tiny-qwen2 is read from its materialized folder: that folder is an input too."""
    from launcher.model.builtin import fingerprint

    cache = tmp_path / "cache"
    materialized = cache / "builtin" / f"tiny-qwen2-{fingerprint('builtin:tiny-qwen2')}"
    shutil.copytree(local_model, materialized)
    args = (f"output.dir={materialized}", "output.overwrite=true", *QUICK)
    _refused_untouched(materialized, ("is model.path",), TINY, *args, env={"LAUNCHER_CACHE": str(cache)})


@pytest.mark.multiproc
def test_output_dir_inside_model_path_is_refused(local_model):
    proc = _launch(TINY, f"model.path={local_model}", f"output.dir={local_model / 'run'}", *QUICK)
    _refused(proc, "lies inside model.path")
    assert not (local_model / "run").exists()


@pytest.mark.multiproc
def test_output_dir_holding_model_path_is_refused(local_model, tmp_path):
    """A project folder with the model in it and a stray plan.json: overwrite would have deleted the model."""
    project = tmp_path / "project"
    shutil.copytree(local_model, project / "model")
    (project / "plan.json").write_text("{}")
    args = (f"model.path={project / 'model'}", f"output.dir={project}", "output.overwrite=true", *QUICK)
    _refused_untouched(project, ("contains model.path",), TINY, *args)


@pytest.mark.multiproc
@pytest.mark.parametrize("inside", [False, True])
def test_dataset_folder_as_or_around_output_dir_is_refused(tmp_path, inside):
    folder = tmp_path / "rows"
    folder.mkdir()
    shutil.copy(ROOT / "data" / "demo_sft.json", folder / "train.json")
    out = folder / "run" if inside else folder
    args = (f"data.datasets=[{folder}]", f"output.dir={out}", "output.overwrite=true", *QUICK)
    _refused_untouched(folder, ("data.datasets", "lies inside" if inside else "is data.datasets"), TINY, *args)


@pytest.mark.multiproc
def test_adapter_being_continued_as_output_dir_is_refused(tmp_path):
    """A later stage (dpo on sft's adapter) pointed at the earlier stage's output.dir would delete what it trains on."""
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / ".launcher-run").write_text('{"version": 1}')
    args = (f"model.adapter={adapter}", f"output.dir={adapter}", "output.overwrite=true", *QUICK)
    _refused_untouched(adapter, ("is model.adapter",), TINY, *args)


@pytest.mark.multiproc
def test_output_dir_inside_the_resume_checkpoint_is_refused(tmp_path):
    checkpoint = tmp_path / "old" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    proc = _launch(TINY, f"train.resume={checkpoint}", f"output.dir={checkpoint / 'run'}", *QUICK)
    _refused(proc, "lies inside train.resume")
    assert not (checkpoint / "run").exists()


@pytest.mark.multiproc
def test_project_folder_with_a_stray_plan_json_is_not_deleted(tmp_path):
    """Any plan.json used to make a folder deletable; only the launcher's own marker does now."""
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "thesis.tex").write_text("precious")
    proc = _launch(TINY, f"output.dir={tmp_path}", "output.overwrite=true", *QUICK)
    _refused(proc, "not a launcher run", "Fix:")
    assert (tmp_path / "thesis.tex").read_text() == "precious" and (tmp_path / "plan.json").read_text() == "{}"


@pytest.mark.multiproc
def test_current_folder_as_output_dir_is_refused():
    proc = _launch(TINY, "output.dir=.", "output.overwrite=true", *QUICK)
    _refused(proc, "is the current folder", "Fix:")
    assert (ROOT / "launcher" / "cli.py").is_file()


@pytest.mark.multiproc
def test_home_folder_as_output_dir_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "plan.json").write_text("{}")
    (home / "notes.txt").write_text("mine")
    proc = _launch(TINY, f"output.dir={home}", "output.overwrite=true", *QUICK, env={"HOME": str(home)})
    _refused(proc, "is your home folder")
    assert (home / "notes.txt").read_text() == "mine" and (home / "plan.json").exists()


@pytest.mark.multiproc
def test_root_as_output_dir_is_refused_with_the_fix():
    proc = _launch(TINY, "output.dir=/", "output.overwrite=true", *QUICK)
    _refused(proc, "is the file system root /", "Fix: set output.dir to a new folder")


@pytest.mark.multiproc
def test_symlinked_output_dir_is_judged_by_its_target(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(user)
    before = _snapshot(user)
    proc = _launch(TINY, f"output.dir={link}", "output.overwrite=true", *QUICK)
    _refused(proc, "not a launcher run", str(user))
    assert _snapshot(user) == before and link.is_symlink()


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory, warm) -> Path:
    """A finished 2-step run (checkpoints at 1 and 2), made by the launcher with output.overwrite=true."""
    out = tmp_path_factory.mktemp("previous") / "run"
    proc = _launch(TINY, f"output.dir={out}", "output.overwrite=true", "train.max_steps=2", "train.save_steps=1")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert json.loads((out / ".launcher-run").read_text())["version"] == 1
    return out


def _busy_port_args(sock: socket.socket) -> list[str]:
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return [f"distributed.master_port={sock.getsockname()[1]}"]


@pytest.mark.multiproc
def test_previous_run_survives_refused_relaunches_then_is_replaced(previous_run, tmp_path):
    """Every refusal comes before anything is removed, plan.json included; a launch that passes every
    check replaces the run (`make demo` twice in a row) and keeps a file no run writes."""
    before = _snapshot(previous_run)
    assert "checkpoint-2/trainer_state.json" in before
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("127.0.0.1 slots=1\nno-such-host.invalid slots=1\n")
    common = [TINY, f"output.dir={previous_run}", "output.overwrite=true", *QUICK]
    with socket.socket() as sock:
        busy = run_launch([*common, *_busy_port_args(sock)], timeout=300)
    _refused(busy, "master_port")
    assert _snapshot(previous_run) == before, "a busy port cost the previous run"
    unreachable = _launch(*common, f"distributed.hostfile={hosts}", "distributed.nnodes=2")
    _refused(unreachable, "unknown host no-such-host.invalid")
    assert _snapshot(previous_run) == before, "a bad hostfile cost the previous run"
    missing = _launch(*common, f"data.datasets=[{tmp_path / 'nope.jsonl'}]")
    _refused(missing, "data.datasets")
    assert _snapshot(previous_run) == before, "a missing dataset cost the previous run"

    (previous_run / "notes.txt").write_text("mine")
    proc = _launch(*common)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "kept 1 file(s) there that no run writes: notes.txt" in proc.stdout
    assert (previous_run / "notes.txt").read_text() == "mine"
    assert not (previous_run / "checkpoint-2").exists(), "the previous run's checkpoints are gone"
    assert json.loads((previous_run / "plan.json").read_text())["recipe"]["train"]["max_steps"] == 1
    assert (previous_run / "adapter_model.safetensors").is_file() and (previous_run / ".launcher-run").is_file()


@pytest.mark.multiproc
def test_data_dump_never_writes_over_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(ROOT / TINY, recipe)
    before = recipe.read_bytes()
    for force in ([], ["--force"]):
        proc = run_launch(
            ["data", str(recipe), "data.dataset_dir=" + str(ROOT / "data"), "--dump", str(recipe), *force]
        )
        _refused(proc, "--dump", "the recipe", "not even with --force")
        assert recipe.read_bytes() == before


@pytest.mark.multiproc
def test_data_dump_over_an_existing_file_needs_force(tmp_path):
    dump = tmp_path / "rows.jsonl"
    dump.write_text("old\n")
    proc = run_launch(["data", TINY, "--dump", str(dump)])
    _refused(proc, "--dump", "the file exists", "--force")
    assert dump.read_text() == "old\n"
    proc = run_launch(["data", TINY, "--dump", str(dump), "--force"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input_ids" in json.loads(dump.read_text().splitlines()[0])


@pytest.mark.unit
def test_data_dump_never_writes_into_a_dataset(tmp_path):
    data = ROOT / "data" / "demo_sft.json"
    before = data.read_bytes()
    proc = run_launch(["data", TINY, "--dump", str(data), "--force"])
    _refused(proc, "--dump", "data.")
    assert data.read_bytes() == before


@pytest.mark.multiproc
def test_chat_output_never_writes_over_its_input(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    before = rows.read_bytes()
    proc = run_launch(["chat", "--model", "builtin:tiny-qwen2", "--input", str(rows), "--output", str(rows), "--force"])
    _refused(proc, "--output", "--input")
    assert rows.read_bytes() == before


@pytest.mark.multiproc
def test_sbatch_script_never_writes_over_the_recipe_and_needs_force_over_a_file(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(ROOT / TINY, recipe)
    before = recipe.read_bytes()
    proc = run_launch(["sbatch", str(recipe), "--script", str(recipe), "--force"])
    _refused(proc, "--script", "the recipe")
    assert recipe.read_bytes() == before
    script = tmp_path / "job.sbatch"
    script.write_text("mine")
    args = ["sbatch", str(recipe), "slurm={nodes: 1, partition: debug}", "--script", str(script)]
    _refused(run_launch(args), "--force")
    assert script.read_text() == "mine"
    assert run_launch([*args, "--force"]).returncode == 0
    assert script.read_text().startswith("#!")


def _own_data(tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the demo datasets and the recipe that reads them (a failing check must not write over
    the repo's own)."""
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data", data)
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(ROOT / TINY, recipe)
    return data, [str(recipe), f"data.dataset_dir={data}", "data.eval_datasets=[demo_dev]"]


@pytest.mark.unit
def test_sbatch_script_never_writes_over_the_registry_or_a_dataset_the_job_reads(tmp_path):
    """`--script data/dataset_info.json --force` used to replace the registry the job then failed to read."""
    data, args = _own_data(tmp_path)
    before = _snapshot(data)
    for target, what in (
        (data / "dataset_info.json", "data.dataset_dir's registry"),
        (data / "demo_dev.json", "data.eval_datasets"),
    ):
        _refused(
            run_launch(["sbatch", *args, "--script", str(target), "--force"]), "--script", what, "not even with --force"
        )
    assert _snapshot(data) == before


@pytest.mark.unit
def test_eval_out_keeps_earlier_predictions_without_force(tmp_path):
    """A second `launch eval` used to replace the first one's predictions silently."""
    _, args = _own_data(tmp_path)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "generated_predictions.jsonl").write_text("earlier\n")
    _refused(run_launch(["eval", *args, "--out", str(out)]), f"--out {out}/generated_predictions.jsonl", "--force")
    assert (out / "generated_predictions.jsonl").read_text() == "earlier\n"


@pytest.mark.unit
def test_eval_out_is_never_a_dataset_nor_a_file(tmp_path):
    data, args = _own_data(tmp_path)
    before = _snapshot(data)
    folder_dataset = tmp_path / "rows"  # a dataset that is a folder: every file in it is read as rows
    folder_dataset.mkdir()
    shutil.copy(data / "demo_dev.json", folder_dataset / "part-0.json")
    _refused(
        run_launch(["eval", *args, "--dataset", str(folder_dataset), "--out", str(folder_dataset), "--force"]),
        "lies inside data.eval_datasets",
    )
    assert sorted(p.name for p in folder_dataset.iterdir()) == ["part-0.json"]
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    _refused(run_launch(["eval", *args, "--out", str(notes)]), f"--out {notes}: a file, not a folder")
    assert notes.read_text() == "mine" and _snapshot(data) == before


@pytest.mark.unit
@pytest.mark.parametrize("verb", ["merge", "consolidate"])
def test_merge_and_consolidate_out_never_lie_inside_their_input(tmp_path, verb):
    """`--out ADAPTER/merged` used to write the merged model into the adapter folder it read."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    out = source / "merged"
    args = ["--base", "builtin:tiny-qwen2", "--adapter", str(source)] if verb == "merge" else [str(source)]
    named = "lies inside --adapter" if verb == "merge" else "lies inside the checkpoint"
    _refused(run_launch([verb, *args, "--out", str(out)]), f"--out {out}: {named}")
    assert sorted(p.name for p in source.iterdir()) == ["adapter_config.json"]
