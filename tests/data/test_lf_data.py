"""LLaMA-Factory's data habits through `launch data` (the real CLI): `dataset: a,b` as one string, a hub
dataset's downloaded folder, and preference/KTO rows longer than cutoff_len cut as LF cuts them.

Oracles: the same rows read another way (each dataset alone, the rows as one plain file), and the
untruncated rows (a large cutoff_len) cut by LF's rule (infer_seqlen in its data processor) as stated below."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from launcher.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
NO_CACHE = ["data.cache=false"]


def launch_data(capsys, recipe: Path | str, overrides: list[str], dump: Path) -> tuple[int, str, list[dict]]:
    code = main(["data", str(recipe), *NO_CACHE, *overrides, "--preview", "0", "--dump", str(dump), "--force"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in dump.read_text().splitlines()] if code == 0 else []
    return code, captured.out + captured.err, rows


def test_one_comma_separated_string_names_each_dataset(tmp_path, capsys):
    recipe = yaml.safe_load((ROOT / "recipes/sft_tiny.yaml").read_text())
    recipe["data"].update(datasets="demo_sft, demo_openai", dataset_dir=str(DATA))  # as LF writes `dataset: a,b`
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, both = launch_data(capsys, path, [], tmp_path / "both.jsonl")
    assert code == 0, out
    alone = [
        launch_data(capsys, path, [f"data.datasets=[{name}]"], tmp_path / f"{name}.jsonl")[2]
        for name in ("demo_sft", "demo_openai")
    ]
    assert both == alone[0] + alone[1] and alone[0] and alone[1]
    assert f"examples: {len(both)} " in out


ROWS = [
    {"instruction": f"Say {word}.", "input": "", "output": f"{word.capitalize()}."}
    for word in ("one", "two", "three", "four", "five")
]


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _hub_copy(root: Path) -> None:
    """What `huggingface-cli download --repo-type dataset` leaves: a card, git metadata, datasets' metadata JSON,
    shards named for their split under data/, and a second copy with one subfolder per configuration."""
    for copy in ("hub", "hub_configs"):
        (root / copy).mkdir(parents=True)
        (root / copy / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# A dataset card\n")
        (root / copy / ".gitattributes").write_text("*.parquet filter=lfs\n")
        (root / copy / "dataset_infos.json").write_text(json.dumps({"default": {"splits": {"train_sft": {}}}}))
    _parquet(root / "hub/data/train_sft-00000-of-00001.parquet", ROWS[:3])
    _parquet(root / "hub/data/test_sft-00000-of-00001.parquet", ROWS[3:])
    _parquet(root / "hub_configs/main/train-00000-of-00001.parquet", ROWS[:2])
    _parquet(root / "hub_configs/other/train-00000-of-00001.parquet", ROWS[2:])


@pytest.mark.parametrize(
    "entry,rows",
    [
        ({"file_name": "hub", "split": "train_sft"}, ROWS[:3]),
        ({"file_name": "hub", "split": "test_sft"}, ROWS[3:]),
        ({"file_name": "hub_configs", "subset": "main"}, ROWS[:2]),  # LF's default split "train" of one config
    ],
)
def test_a_downloaded_hub_folder_reads_its_split(tmp_path, capsys, entry, rows):
    _hub_copy(tmp_path)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"hub_set": entry}))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out, got = launch_data(
        capsys,
        "recipes/sft_tiny.yaml",
        [f"data.dataset_dir={tmp_path}", "data.datasets=[hub_set]"],
        tmp_path / "hub.jsonl",
    )
    assert code == 0, out
    assert (
        got
        == launch_data(capsys, "recipes/sft_tiny.yaml", [f"data.datasets=[{plain}]"], tmp_path / "plain_dump.jsonl")[2]
    )
    assert f"examples: {len(rows)} " in out


def test_the_default_split_of_a_folder_split_by_file_names_is_named_not_mixed(tmp_path, capsys):
    # no file is named "train": reading train_sft and test_sft together would train on the test split
    _hub_copy(tmp_path)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"hub_set": {"file_name": "hub"}}))
    code, out, _ = launch_data(
        capsys,
        "recipes/sft_tiny.yaml",
        [f"data.dataset_dir={tmp_path}", "data.datasets=[hub_set]"],
        tmp_path / "dump.jsonl",
    )
    assert code == 2 and "no files of split 'train'" in out and "test_sft, train_sft" in out and "Fix: set split" in out


def lf_lengths(prompt: int, reply: int, cutoff: int) -> tuple[int, int]:
    """LLaMA-Factory's infer_seqlen, as its rule reads: the reply keeps everything if it is under half the cutoff;
    else, if the prompt is under half, the reply gets what the prompt leaves; else the cutoff is split in proportion
    (the reply's share rounded down). The prompt then keeps what the reply leaves."""
    if 2 * reply < cutoff:
        new_reply = reply
    elif 2 * prompt < cutoff:
        new_reply = min(reply, cutoff - prompt)
    else:
        new_reply = min(reply, cutoff * reply // (prompt + reply))
    return min(prompt, cutoff - new_reply), new_reply


CUT = 36  # the tiny datasets' prompts are 29-45 tokens: every case of the rule occurs
REPLIES = {"dpo": ("chosen_ids", "rejected_ids"), "kto": ("completion_ids",)}


@pytest.mark.parametrize("stage", REPLIES)
def test_long_rows_are_cut_as_llama_factory_cuts_them_and_counted(stage, tmp_path, capsys):
    recipe = f"recipes/{stage}_tiny.yaml"
    code, out, whole = launch_data(capsys, recipe, ["data.cutoff_len=4096"], tmp_path / "whole.jsonl")
    assert code == 0, out
    code, out, cut = launch_data(capsys, recipe, [f"data.cutoff_len={CUT}"], tmp_path / "cut.jsonl")
    assert code == 0, out
    assert len(cut) == len(whole), "no row may be dropped"
    truncated = 0
    for full, short in zip(whole, cut):
        reply = max(len(full[column]) for column in REPLIES[stage])
        prompt_len, reply_len = lf_lengths(len(full["prompt_ids"]), reply, CUT)
        assert short["prompt_ids"] == full["prompt_ids"][:prompt_len]
        for column in REPLIES[stage]:
            assert short[column] == full[column][:reply_len]
        truncated += len(full["prompt_ids"]) + reply > CUT
    prompt_cut = sum(len(s["prompt_ids"]) < len(f["prompt_ids"]) for f, s in zip(whole, cut))
    assert 0 < prompt_cut and truncated < len(cut)  # prompts cut, rows left whole: the counts are not trivial
    assert (
        f"rows: {len(cut)}   truncated (longer than data.cutoff_len={CUT}): {truncated}   dropped (empty reply): 0"
        in out
    )
