"""Tokenized-data cache: built once, reused, keyed by everything the tokens depend on, safe
against partial/corrupt entries, concurrent builders and a builder that never finishes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launcher.data.cache import MANIFEST, Tokenized, _BuildLock, cache_key, load_or_build
from launcher.data.datasets import DataError
from launcher.data.pipeline import build_sft_data, sft_data
from launcher.model.builtin import builtin_source_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))


@pytest.fixture
def cfg(tmp_path):
    rows = [{"instruction": f"question {i}", "output": f"answer {i} " * (i % 5 + 1)} for i in range(40)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json"}}))
    return {
        "dataset_dir": str(tmp_path),
        "datasets": ["d"],
        "max_samples": None,
        "cutoff_len": 64,
        "train_on_prompt": False,
        "mask_history": False,
        "packing": "none",
        "cache_dir": str(tmp_path / "cache"),
    }


def _entries(cfg: dict) -> list[Path]:
    return sorted(p for p in Path(cfg["cache_dir"]).iterdir() if p.is_dir())


@pytest.mark.unit
def test_second_build_loads_the_cache_and_equals_a_fresh_tokenization(tokenizer, cfg, caplog):
    caplog.set_level(logging.INFO, logger="launcher.data")
    first = sft_data(["d"], cfg, tokenizer)
    assert any("data cache: built" in r.message for r in caplog.records)
    (entry,) = _entries(cfg)
    stamp = (entry / MANIFEST).stat().st_mtime_ns
    caplog.clear()
    second = sft_data(["d"], cfg, tokenizer)
    assert [r.message for r in caplog.records] == [f"data cache: loaded {entry}"], "no re-tokenization"
    assert (entry / MANIFEST).stat().st_mtime_ns == stamp
    fresh = build_sft_data(["d"], cfg, tokenizer)
    assert first == second == fresh


@pytest.mark.unit
@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest"])
def test_a_partial_or_corrupt_entry_is_rebuilt_never_used(tokenizer, cfg, caplog, damage):
    good = sft_data(["d"], cfg, tokenizer)
    (entry,) = _entries(cfg)
    tokens = entry / "input_ids.tokens.npy"
    data = tokens.read_bytes()
    if damage == "truncate":
        tokens.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        tokens.write_bytes(data[:-4] + bytes(b ^ 0xFF for b in data[-4:]))  # same size, different tokens
    else:
        (entry / MANIFEST).unlink()  # a crash before the manifest (written last)
    caplog.set_level(logging.INFO, logger="launcher.data")
    assert sft_data(["d"], cfg, tokenizer) == good
    assert any("rebuilding" in r.message for r in caplog.records)
    assert any("data cache: built" in r.message for r in caplog.records)
    caplog.clear()
    sft_data(["d"], cfg, tokenizer)
    assert any("data cache: loaded" in r.message for r in caplog.records)


@pytest.mark.unit
def test_key_changes_with_file_content_settings_template_and_tokenizer(tokenizer, cfg):
    base = cache_key("sft", ["d"], cfg, tokenizer, {"template": "auto"})
    assert cache_key("sft", ["d"], dict(cfg), tokenizer, {"template": "auto"}) == base
    assert cache_key("sft", ["d"], {**cfg, "cache_dir": "/elsewhere"}, tokenizer, {"template": "auto"}) == base
    changed = {
        "cutoff_len": cache_key("sft", ["d"], {**cfg, "cutoff_len": 65}, tokenizer, {"template": "auto"}),
        "packing": cache_key("sft", ["d"], {**cfg, "packing": "neat"}, tokenizer, {"template": "auto"}),
        "masking": cache_key("sft", ["d"], {**cfg, "mask_history": True}, tokenizer, {"template": "auto"}),
        "max_samples": cache_key("sft", ["d"], {**cfg, "max_samples": 3}, tokenizer, {"template": "auto"}),
        "template": cache_key("sft", ["d"], cfg, tokenizer, {"template": "qwen2"}),
        "stage": cache_key("kto", ["d"], cfg, tokenizer, {"template": "auto"}),
    }
    other = AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))
    other.add_tokens(["<new>"])
    changed["tokenizer"] = cache_key("sft", ["d"], cfg, other, {"template": "auto"})
    data = Path(cfg["dataset_dir"]) / "d.json"
    data.write_text(data.read_text().replace("question 7", "question 8"))
    changed["file content"] = cache_key("sft", ["d"], cfg, tokenizer, {"template": "auto"})
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed


BUILDER = """
import json, sys, time
from pathlib import Path
from launcher.data.cache import Tokenized, load_or_build
entry, log, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # both processes reach the cache at the same moment
def build():
    with log.open("a") as handle:
        handle.write("built\\n")
    time.sleep(1.0)
    return Tokenized({"input_ids": [[i, i + 1] for i in range(1000)]}, {"n": 1000})
print(json.dumps(load_or_build(entry, build, timeout_s=60).columns["input_ids"][-1]))
"""


@pytest.mark.multiproc
def test_concurrent_builders_build_once_and_agree(tmp_path):
    entry, log = tmp_path / "cache" / "entry", tmp_path / "builds.log"
    start = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(entry), str(log), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert log.read_text() == "built\n"
    assert outs[0] == outs[1] == "[999, 1000]\n"


@pytest.mark.unit
def test_a_waiting_rank_times_out_naming_the_entry_and_lock(tmp_path):
    entry = tmp_path / "entry"
    holder = _BuildLock(tmp_path / "entry.lock")  # a builder that never finishes
    assert holder.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(
            DataError, match=rf"waited 1 s for another process to build {entry} .*{holder.path}.*pid {os.getpid()}"
        ):
            load_or_build(
                entry, lambda: pytest.fail("must not build while another holds the lock"), timeout_s=1, poll_s=0.05
            )
        assert time.monotonic() - started < 5
    finally:
        holder.release()
    # the lock of a builder that is gone is free again
    assert load_or_build(entry, lambda: Tokenized({"x": [[1]]}), timeout_s=1).columns == {"x": [[1]]}


@pytest.mark.unit
def test_lfs_never_timeout_is_a_wait_the_os_accepts():
    """LLaMA-Factory's ddp_timeout: 180000000 (3000000 minutes) reaches poll() as milliseconds in a C int:
    wait_s caps it, so a rank waiting for another's cache build polls instead of raising OverflowError."""
    import selectors

    from launcher.data.cache import wait_s

    seconds = wait_s({"distributed": {"timeout_minutes": 3_000_000}})
    assert 24 * 86400 < seconds < 25 * 86400
    read_end, write_end = os.pipe()
    os.write(write_end, b"x")
    with selectors.DefaultSelector() as selector:
        selector.register(read_end, selectors.EVENT_READ)
        assert selector.select(seconds)  # ready at once; a longer timeout raises OverflowError
        with pytest.raises(OverflowError):
            selector.select(seconds + 1)
    os.close(read_end)
    os.close(write_end)
