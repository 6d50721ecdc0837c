"""Monitoring: every documented TensorBoard tag with sane values, the same losses in wandb's, mlflow's and swanlab's
offline logs, trainer_log.jsonl, loss.png,
rank logs, the NaN/Inf stop with its last-good checkpoint and resume (one 2-rank run plus its
resume), and the MFU formula against torch's FLOP counter."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import struct
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, free_port, run_launch

TINY = "recipes/sft_tiny.yaml"
# steps 1-4 train normally (eval at 2 and 4, checkpoint-4), the loss turns NaN on rank 1 from
# step 5, and the run stops after max_bad_steps=2 at step 6 with a forced checkpoint-6
RUN = [
    "train.max_steps=8",
    "data.cutoff_len=64",
    "data.max_samples=40",
    "train.logging_steps=1",
    "train.save_steps=4",
    "data.val_size=0.2",
    "train.eval_steps=2",
    "train.max_bad_steps=2",
]
LOGGERS = "output.report_to=[tensorboard,wandb,mlflow,swanlab]"  # the stopped run logs to each, read back below
NAN = {"LAUNCHER_NAN_STEP": "5", "LAUNCHER_NAN_RANK": "1"}


def documented_tags() -> list[str]:
    """The tags of the table in docs/monitoring.md."""
    text = (ROOT / "docs" / "monitoring.md").read_text()
    table = text.split("## TensorBoard scalars", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `((?:train|eval)/\w+)` \|", table, flags=re.M)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, warm):
    out = tmp_path_factory.mktemp("monitoring") / "run"
    proc = run_launch(
        [TINY, f"output.dir={out}", f"distributed.master_port={free_port()}", *RUN, LOGGERS], env=NAN, timeout=600
    )
    return out, proc


def _events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    return events


@pytest.mark.multiproc
def test_every_documented_tag_is_written_with_sane_values(stopped_run):
    out, proc = stopped_run
    assert f"tensorboard --logdir {out / 'runs'}" in proc.stdout
    tags = documented_tags()
    assert len(tags) >= 12
    events = _events(out)
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    plan_text = events.Tensors("plan/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(plan_text.strip("`\n"))["output_dir"] == str(out)
    assert not set(tags) - set(scalars), f"documented but not written: {set(tags) - set(scalars)}"
    logged_steps = [step for step, _ in scalars["train/loss"]]
    assert logged_steps == [1, 2, 3, 4, 5, 6]
    for tag in ("train/mfu", "train/padding_efficiency"):
        assert all(0 < value <= 1 for _, value in scalars[tag]), (tag, scalars[tag])
    assert all(value > 0 for _, value in scalars["train/peak_memory_gib"])
    for tag in (
        "train/tokens_per_second",
        "train/trained_tokens_per_second",
        "train/samples_per_second",
        "train/step_time",
    ):
        assert all(value > 0 for _, value in scalars[tag]), (tag, scalars[tag])
    trained = [v for _, v in scalars["train/trained_tokens_per_second"]]
    assert all(t < a for t, a in zip(trained, (v for _, v in scalars["train/tokens_per_second"])))
    assert [step for step, _ in scalars["eval/loss"]] == [2, 4, 6]
    losses = dict(scalars["train/loss"])
    assert all(math.isfinite(losses[s]) for s in (1, 2, 3, 4)) and all(math.isnan(losses[s]) for s in (5, 6))


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a wandb offline run file: a leveldb-style log (7-byte ':W&B' header, 32 KiB blocks of
    records with a 7-byte header: crc, length, kind) of wandb's protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    rows, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def _wandb_losses(out: Path) -> dict[int, float]:
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    return {int(r["train/global_step"]): r["train/loss"] for r in _wandb_history(run_file) if "train/loss" in r}


def _mlflow_losses(out: Path, monkeypatch) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((out / "mlruns").as_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}


def _swanlab_losses(out: Path) -> dict[int, float]:
    """swanlab's local mode: runs.swanlab (sqlite) names each metric's folder of JSON lines."""
    with sqlite3.connect(out / "swanlog" / "runs.swanlab") as db:
        run, folder = db.execute(
            "SELECT e.run_id, t.folder FROM tag t JOIN experiment e ON t.experiment_id = e.id "
            "WHERE t.name = 'train/loss' ORDER BY e.id"
        ).fetchone()
    lines = [json.loads(line) for log in (out / "swanlog" / run / "logs" / folder).glob("*.log") for line in log.open()]
    return {line["index"]: line["data"] for line in lines}


@pytest.mark.multiproc
def test_wandb_mlflow_and_swanlab_log_the_losses_offline(stopped_run, monkeypatch):
    out, proc = stopped_run
    losses = {step: value for step, value in ((e.step, e.value) for e in _events(out).Scalars("train/loss"))}
    good = {step: losses[step] for step in (1, 2, 3, 4)}
    for name, logged in (
        ("wandb", _wandb_losses(out)),
        ("mlflow", _mlflow_losses(out, monkeypatch)),
        ("swanlab", _swanlab_losses(out)),
    ):
        assert {step: logged.get(step) for step in good} == pytest.approx(good, rel=1e-6), name
    assert f"wandb: offline in {out / 'wandb'}" in proc.stdout


@pytest.mark.multiproc
def test_trainer_log_loss_plot_and_progress_lines(stopped_run):
    out, proc = stopped_run
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 6]
    for record in train:
        assert record["total_steps"] == 8 and record["elapsed"] > 0 and record["eta"] >= 0
        assert 0 < record["mfu"] <= 1 and record["tokens_per_second"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # not a terminal: one plain line per log from rank 0 only, no tqdm bar, no printed dicts
    assert len(re.findall(r"^\[train\] step 4/8 \| loss [0-9.]+ \|.* tokens/s \| MFU .*ETA", proc.stdout, re.M)) == 1
    assert "it/s]" not in proc.stdout + proc.stderr and "{'loss'" not in proc.stdout


@pytest.mark.multiproc
def test_rank_logs_hold_each_ranks_output(stopped_run):
    out, _ = stopped_run
    rank0, rank1 = ((out / "logs" / f"rank-{k}.log").read_text() for k in (0, 1))
    assert rank0.startswith("=== launcher worker start rank 0") and rank1.startswith("=== launcher worker start rank 1")
    assert "[train] step 6/8" in rank0 and "[train]" not in rank1


@pytest.mark.unit
def test_rank_log_copy_of_a_terminal_progress_bar_keeps_lines_not_redraws():
    """On a terminal rank 0's rich bar redraws in place; the log copy keeps the printed lines and
    the bar's last state, without control codes."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from launcher.monitoring.ranklog import _LogCleaner

    screen = io.StringIO()
    with Progress(console=Console(file=screen, force_terminal=True, width=80), auto_refresh=False) as progress:
        task = progress.add_task("train", total=3)
        for step in range(1, 4):
            progress.update(task, completed=step, refresh=True)
            progress.console.print(f"[train] step {step}/3", markup=False)
    raw = screen.getvalue().encode()
    assert b"\x1b[" in raw and raw.count(b"\r") >= 3  # what the terminal got: redraws
    cleaner = _LogCleaner()
    logged = b"".join(cleaner.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + cleaner.flush()  # split anywhere
    lines = logged.decode().splitlines()
    assert [line for line in lines if line.startswith("[train]")] == [
        "[train] step 1/3",
        "[train] step 2/3",
        "[train] step 3/3",
    ]
    assert len(lines) == 4 and lines[-1].startswith("train ") and lines[-1].endswith("100% 0:00:00"), lines
    assert "\x1b" not in logged.decode() and "\r" not in logged.decode()


@pytest.mark.multiproc
def test_nan_loss_stops_with_last_good_checkpoint_that_resumes(stopped_run):
    from safetensors.torch import load_file

    out, proc = stopped_run
    assert proc.returncode != 0, proc.stdout[-3000:]
    for step in (5, 6):
        assert f"[launcher] step {step}: loss or gradient norm is NaN/Inf, update skipped" in proc.stdout
    assert re.search(
        r"stopped: loss or gradient norm NaN/Inf at 2 consecutive steps \(5-6; train.max_bad_steps=2\)\. "
        rf"{re.escape(str(out / 'checkpoint-6'))} holds the model and optimizer state of the last good step 4",
        proc.stderr,
    ), proc.stderr[-3000:]
    assert not (out / "adapter_model.safetensors").exists(), "a stopped run must not publish a final model"
    report = proc.stderr.split(
        "[launch] rank-0 failed first; its last lines", 1
    )  # printed last, after torchrun's summary
    assert len(report) == 2 and "[launcher] stopped: loss or gradient norm NaN/Inf" in report[1], proc.stderr[-3000:]
    # the bad updates were skipped: the stop's checkpoint holds exactly step 4's weights
    good, stopped = (load_file(out / f"checkpoint-{s}" / "adapter_model.safetensors") for s in (4, 6))
    assert good.keys() == stopped.keys()
    assert all(torch.equal(good[k], stopped[k]) and torch.isfinite(good[k]).all() for k in good)
    resumed = run_launch(
        [TINY, f"output.dir={out}", f"distributed.master_port={free_port()}", *RUN, "train.max_steps=7"], timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-6" in resumed.stdout
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert math.isfinite([e["loss"] for e in history if "loss" in e][-1])
    assert (out / "adapter_model.safetensors").is_file()


def _counted_flops(model, ids: torch.Tensor, backward: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = model(input_ids=ids, labels=ids).loss
        if backward:
            loss.backward()
    return counter.get_total_flops()


@pytest.mark.multiproc
def test_mfu_formula_matches_a_flop_count_of_the_tiny_model():
    """FlopCounterMode counts every matmul the model runs (eager attention, so QK^T and AV are
    plain matmuls). Forward: 2 per weight per token + 4 L d n^2, counted by hand from the config.
    Forward + backward: the formula, for full fine-tuning (6N) and for LoRA (4N + 6 N_lora).
    The only matmul the formula leaves out is the rotary embedding's tiny one, hence 1e-3."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.model.builtin import materialize
    from launcher.monitoring.flops import model_flops

    path = materialize("builtin:tiny-qwen2")
    config = AutoConfig.from_pretrained(path)
    h, inter, layers, heads, kv = (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
    )
    head_dim = h // heads
    weights = (
        layers * (h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * inter)
        + h * config.vocab_size
    )
    batch, n = 2, 24
    ids = torch.randint(3, config.vocab_size, (batch, n), generator=torch.Generator().manual_seed(0))
    tokens, pairs = batch * n, batch * n * n

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    assert _counted_flops(model, ids, backward=False) == pytest.approx(
        2 * weights * tokens + 4 * layers * heads * head_dim * pairs, rel=1e-3
    )
    counts = model_flops(model)
    assert (counts.trained, counts.frozen) == (weights, 0)
    assert _counted_flops(model, ids, backward=True) == pytest.approx(counts.flops(tokens, pairs), rel=1e-3)

    model.zero_grad(set_to_none=True)
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    lora.enable_input_require_grads()  # what the Trainer does with gradient checkpointing
    counts = model_flops(lora)
    adapter = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert (counts.trained, counts.frozen) == (adapter, weights)
    assert _counted_flops(lora, ids, backward=True) == pytest.approx(counts.flops(tokens, pairs), rel=1e-3)


@pytest.mark.unit
def test_gpu_peak_is_matched_by_whole_words_of_the_nvidia_smi_name():
    """An L4 must not match the L40S entry, an H100 PCIe is not the SXM part, unknown names get no MFU."""
    from launcher.monitoring.flops import GPU_BF16_PEAK_TFLOPS, gpu_peak_flops

    table = {parts: tflops * 1e12 for parts, tflops in GPU_BF16_PEAK_TFLOPS}
    assert gpu_peak_flops("NVIDIA L4") == table[("L4",)] != gpu_peak_flops("NVIDIA L40S") == table[("L40S",)]
    assert (
        gpu_peak_flops("NVIDIA H100 PCIe")
        == table[("H100", "PCIe")]
        < gpu_peak_flops("NVIDIA H100 80GB HBM3")
        == table[("H100",)]
    )
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == table[("A100",)]
    assert gpu_peak_flops("NVIDIA A10G") is None and gpu_peak_flops("Intel Arc A770") is None


@pytest.mark.unit
def test_cpu_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """The first start measures and writes the cache; later ones read its figure back (a planted
    one proves it is read, not measured again); another thread count is another key."""
    from launcher.monitoring.cpu_peak import cache_key, cache_path, cpu_peak_flops

    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path))
    measured, cached = cpu_peak_flops(torch.float32)
    assert not cached and measured > 0 and cache_path().parent == tmp_path
    assert json.loads(cache_path().read_text()) == {cache_key(torch.float32): measured}
    assert cpu_peak_flops(torch.float32) == (measured, True)
    cache_path().write_text(json.dumps({cache_key(torch.float32): 1.5e9}))
    assert cpu_peak_flops(torch.float32) == (1.5e9, True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert cpu_peak_flops(torch.float32)[1] is False  # the thread count is part of the key
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache_path().read_text())) == 2 and [p.name for p in tmp_path.iterdir()] == ["cpu_peak.json"]


OTHER = '"a CPU elsewhere | torch 2.0 | 4 threads | torch.float32": 2.5e9'


@pytest.mark.unit
@pytest.mark.parametrize(
    "content",
    ["{not json", "[1.5e9]", *(f'{{"KEY": {bad}, {OTHER}}}' for bad in ('"1.5e9"', "-1.0", "NaN", "true", "{}", "1"))],
)
def test_a_malformed_cpu_peak_cache_is_never_trusted(tmp_path, monkeypatch, content):
    """Whatever the file holds that this module does not write, the peak is measured and the file
    rewritten whole, keeping the entries that are well-formed."""
    from launcher.monitoring.cpu_peak import cache_key, cache_path, cpu_peak_flops

    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path))
    key = cache_key(torch.float32)
    cache_path().write_text(content.replace("KEY", key))
    peak, cached = cpu_peak_flops(torch.float32)
    assert not cached and math.isfinite(peak) and peak > 1e6
    kept = json.loads(f"{{{OTHER}}}") if OTHER in content else {}
    assert json.loads(cache_path().read_text()) == {**kept, key: peak}
