"""A recipe's model is ready before any rank starts (issue 16, point 3), and `launch download`'s refusals.

No network: the hub is a local HF cache in tmp_path laid out as huggingface_hub lays it out (blobs, snapshots
of symlinks, refs/main), holding the builtin model under a hub id, with HF_HUB_CACHE pointing at it. An uncached
id offline is refused at once with the `launch download` command; a local folder that lacks a file is refused
naming it. `launch download` itself is tested for its refusals and argument checks, and against hubs that cannot be
reached: real loopback endpoints that stall or refuse, and a name that does not resolve."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_launch

TINY = "recipes/sft_tiny.yaml"
HUB_ID = "tiny-org/tiny-qwen2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str = HUB_ID, skip: tuple[str, ...] = ()) -> Path:
    """A huggingface_hub cache under root holding the builtin model as repo_id; returns the cache folder."""
    from launcher.model.builtin import materialize

    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(Path(materialize("builtin:tiny-qwen2")).iterdir()):
        if not file.is_file() or file.name in skip or file.name == "builtin.json":
            continue
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root / "hub"


def offline(cache: Path | None = None) -> dict:
    env = {"HF_HUB_OFFLINE": "1"}
    return {**env, "HF_HUB_CACHE": str(cache)} if cache else env


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.multiproc
def test_a_cached_hub_id_plans_from_its_snapshot(tmp_path, warm):
    cache = hub_cache(tmp_path)
    proc = run_launch(["plan", TINY, f"model.path={HUB_ID}"], timeout=120, env=offline(cache))
    assert proc.returncode == 0, proc.stderr
    snapshot = cache / f"models--tiny-org--tiny-qwen2/snapshots/{COMMIT}"
    assert f"model: {HUB_ID} in the local hub cache: {snapshot}" in proc.stdout


@pytest.mark.multiproc
def test_an_uncached_hub_id_offline_is_refused_at_once_with_the_download_command(tmp_path):
    cache = tmp_path / "empty-hub"
    cache.mkdir()
    out = tmp_path / "run"
    plan = run_launch(["plan", TINY, "model.path=nobody/uncached-model"], timeout=120, env=offline(cache))
    assert plan.returncode == 0, plan.stderr  # planning may happen anywhere; it says what training will need
    assert (
        "not in the local huggingface cache" in plan.stdout and "`launch download nobody/uncached-model`" in plan.stdout
    )
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    train = run_launch([TINY, "model.path=nobody/uncached-model", f"output.dir={out}"], timeout=120, env=offline(cache))
    wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    _refused(
        train,
        "model.path = 'nobody/uncached-model' is not in the local hub cache",
        "HF_HUB_OFFLINE",
        "Fix: run `launch download nobody/uncached-model`",
    )
    assert not out.exists()  # before anything is written, let alone a rank started
    # the bound: refused in under 2 s, not ~100 s of ranks timing out; CPU time, so a loaded machine
    # does not fail it, and a wall-clock bound with margin that no rank start or network wait fits in
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 2.0 and wall < 15, (cpu, wall)


@pytest.mark.unit
def test_a_real_qwen2_recipe_still_plans_offline():
    proc = run_launch(["plan", "recipes/sft_qwen2.yaml"], timeout=120, env=offline())
    assert proc.returncode == 0, proc.stderr
    assert "`launch download Qwen/Qwen2-7B-Instruct`" in proc.stdout or "in the local hub cache" in proc.stdout


@pytest.mark.multiproc
def test_a_cached_snapshot_without_its_tokenizer_is_refused_offline_naming_it(tmp_path, warm):
    cache = hub_cache(tmp_path, skip=("tokenizer.json",))
    out = tmp_path / "run"
    proc = run_launch([TINY, f"model.path={HUB_ID}", f"output.dir={out}"], timeout=120, env=offline(cache))
    _refused(proc, "lacks a tokenizer (one of tokenizer.json", f"`launch download {HUB_ID}`")
    assert not out.exists()


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "remove,named",
    [
        ("tokenizer.json", "a tokenizer (one of tokenizer.json"),
        ("model.safetensors", "weights (*.safetensors or pytorch_model*.bin)"),
    ],
)
def test_a_local_folder_without_a_file_every_rank_loads_is_refused_naming_it(tmp_path, warm, remove, named):
    from launcher.model.builtin import materialize

    folder = tmp_path / "model"
    shutil.copytree(materialize("builtin:tiny-qwen2"), folder)
    (folder / remove).unlink()
    out = tmp_path / "run"
    for verb in (["plan"], []):
        proc = run_launch([*verb, TINY, f"model.path={folder}", f"output.dir={out}"], timeout=120)
        _refused(proc, f"model.path = '{folder}' lacks {named}", "Fix:")
    assert not out.exists()


@pytest.mark.multiproc
def test_a_sharded_local_folder_missing_a_shard_is_refused_naming_it(tmp_path, warm):
    from launcher.model.builtin import materialize

    folder = tmp_path / "model"
    shutil.copytree(materialize("builtin:tiny-qwen2"), folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    proc = run_launch(["plan", TINY, f"model.path={folder}"], timeout=120)
    _refused(proc, "lacks model-00002-of-00002.safetensors (named by model.safetensors.index.json)")


@pytest.mark.multiproc
def test_modelscope_without_its_package_is_refused_with_the_fix(tmp_path):
    out = tmp_path / "run"
    proc = run_launch(
        [TINY, "model.path=qwen/Qwen2-0.5B", "model.hub=modelscope", f"output.dir={out}"], timeout=120, env=offline()
    )
    _refused(proc, "model.hub = 'modelscope' needs the modelscope package", "Fix: pip install modelscope")
    assert not out.exists()
    proc = run_launch(["download", "qwen/Qwen2-0.5B", "--hub", "modelscope"], timeout=60, env=offline())
    _refused(proc, "needs the modelscope package", "Fix: pip install modelscope")


@pytest.mark.multiproc
def test_download_refusals_come_before_any_network_use(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        (["Qwen/Qwen2-0.5B"], ("HF_HUB_OFFLINE is set", "env -u HF_HUB_OFFLINE launch download Qwen/Qwen2-0.5B")),
        (["not a/hub id!"], ("not a hub id", "Fix: org/name")),
        (["./no/such/folder"], ("no such folder, and no hub id",)),
        (["Qwen/Qwen2-0.5B", "--cache-dir", str(a_file)], ("is a file, not a folder",)),
        (["Qwen/Qwen2-0.5B", "--revision", ""], ("--revision '': empty",)),
    ]
    for args, needles in cases:
        _refused(run_launch(["download", *args], timeout=60, env=offline()), *needles)
    proc = run_launch(["download", "--hub", "gitee", "Qwen/Qwen2-0.5B"], timeout=60, env=offline())
    assert proc.returncode == 2 and "invalid choice: 'gitee'" in proc.stderr


@pytest.mark.multiproc
def test_download_from_an_unreachable_hub_ends_in_bounded_time_with_the_fix(tmp_path):
    """A hub that accepts and never answers (it hung forever), one that refuses, one whose name does not resolve:
    each is exit 2 naming the endpoint and the fix, well within the timeouts and huggingface_hub's retries."""
    with socket.socket() as stalled, socket.socket() as closed:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(16)  # the kernel accepts connections; nobody ever reads or answers
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        endpoints = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in (stalled, closed)]
        endpoints.append("http://nonexistent.invalid")

        def attempt(endpoint: str) -> tuple[subprocess.CompletedProcess, float]:
            env = {"HF_ENDPOINT": endpoint, "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_HUB_CACHE": str(tmp_path / "hub")}
            start = time.monotonic()
            return run_launch(["download", "Qwen/Qwen2-0.5B"], timeout=120, env=env), time.monotonic() - start

        with ThreadPoolExecutor(len(endpoints)) as pool:  # each mostly waits out the retries: run them together
            results = list(pool.map(attempt, endpoints))
    for endpoint, (proc, seconds) in zip(endpoints, results):
        message = _refused(proc, f"the hub {endpoint} cannot be reached", "HF_HUB_DOWNLOAD_TIMEOUT (now 2 s)")
        assert "`launch download Qwen/Qwen2-0.5B`" in message
        assert seconds < 60, (endpoint, seconds)


@pytest.mark.unit
def test_download_skips_pytorch_bin_weights_where_the_repo_has_safetensors():
    """Kept files as huggingface_hub's own filter (the one snapshot_download applies) sees the patterns."""
    from huggingface_hub.utils import filter_repo_objects

    from launcher.model.hub import download_ignore

    def kept(files: list[str]) -> set[str]:
        return set(filter_repo_objects(files, ignore_patterns=download_ignore(files)))

    common = ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    both = [
        *common,
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
        "model.gguf",
        "original/consolidated.00.pth",
    ]
    assert kept(both) == {*common, *both[4:7]}
    bin_only = [*common, "pytorch_model.bin", "training_args.bin"]
    assert kept(bin_only) == set(bin_only)  # the .bin weights are all it has


@pytest.mark.multiproc
def test_download_of_a_builtin_or_a_recipe_on_it_has_nothing_to_fetch():
    for target in ("builtin:tiny-qwen2", TINY):
        proc = run_launch(["download", target], timeout=60, env=offline())
        assert proc.returncode == 0, proc.stderr
        assert "builtin:tiny-qwen2 is embedded in the launcher: nothing to download" in proc.stdout


@pytest.mark.multiproc
def test_a_cached_hub_id_trains_offline_under_a_users_deepspeed_json(tmp_path, warm):
    """The one real run of both points: 2 ranks load the hub id from the cache with the network off, under the
    user's ZeRO-2 JSON (its stage adopted, its scheduler's step counts filled by the Trainer)."""
    from launcher.checkpoint.paths import zero_shard_ranks
    from tests.conftest import free_port
    from tests.recipe.test_ds_user_config import recipe_without_zero, write_json

    cache, out = hub_cache(tmp_path), tmp_path / "run"
    ds = write_json(
        tmp_path,
        {
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
            "zero_optimization": {"stage": 2},
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {
                    "warmup_min_lr": "auto",
                    "warmup_max_lr": "auto",
                    "warmup_num_steps": "auto",
                    "total_num_steps": "auto",
                },
            },
        },
    )
    proc = run_launch(
        [
            recipe_without_zero(tmp_path),
            f"model.path={HUB_ID}",
            f"distributed.deepspeed_config={ds}",
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            "train.max_steps=2",
            "train.save_steps=2",
            "train.logging_steps=1",
        ],
        timeout=600,
        env=offline(cache),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["env"]["HF_HUB_OFFLINE"] == "1" and plan["deepspeed"]["zero_optimization"] == {"stage": 2}
    step = out / "checkpoint-2"
    assert zero_shard_ranks(step) == 2 and not list(step.glob("global_step2/zero_pp_rank_*_model_states.pt"))  # ZeRO-2
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
