"""LLaMA-Factory dataset_info.json keys beyond file_name/formatting/columns/tags: split,
num_samples, folder, subset are honoured for local files; hub, cloud, script and
multimodal entries are refused with the dataset, the key, the registry file and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.data.datasets import DataError, resolve_dataset
from launcher.data.pipeline import load_examples

pytestmark = pytest.mark.unit

ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]


def _dataset(folder: Path, entry: dict, rows: list[dict] = ROWS, file: str = "d.jsonl") -> dict:
    path = folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl", **entry}}))
    return {"dataset_dir": str(folder), "max_samples": None}


def _prompts(cfg: dict) -> list[str]:
    return [e.messages[0]["content"] for e in load_examples(["d"], cfg)]


@pytest.mark.parametrize(
    "split",
    [
        "train",
        "train[:3]",
        "train[7:]",
        "train[2:5]",
        "train[-3:]",
        "train[:-8]",
        "train[:33%]",
        "train[25%:75%]",
        "train[-15%:]",
        "train[50:]",
    ],
)
def test_split_slices_rows_as_datasets_does(tmp_path, split):
    from datasets import ReadInstruction

    cfg = _dataset(tmp_path, {"split": split})
    oracle = ReadInstruction.from_spec(split).to_absolute({"train": len(ROWS)})[0]
    assert _prompts(cfg) == [f"q{i}" for i in range(oracle.from_, oracle.to)]


def test_num_samples_draws_distinct_rows_or_repeats_every_row(tmp_path):
    fewer = _prompts(_dataset(tmp_path, {"num_samples": 4}))
    assert len(set(fewer)) == 4 and set(fewer) < {r["instruction"] for r in ROWS}
    assert fewer == _prompts(_dataset(tmp_path, {"num_samples": 4})), "seeded: the same rows every run"
    more = _prompts(_dataset(tmp_path, {"num_samples": 25}))
    assert len(more) == 25 and all(more.count(r["instruction"]) in (2, 3) for r in ROWS)
    # LLaMA-Factory's order: split, then num_samples, then the recipe's max_samples
    cfg = _dataset(tmp_path, {"split": "train[:5]", "num_samples": 3})
    assert set(_prompts(cfg)) <= {"q0", "q1", "q2", "q3", "q4"}
    assert len(load_examples(["d"], {**cfg, "max_samples": 2})) == 2


def test_folder_and_subset_select_subfolders_of_a_local_hub_copy(tmp_path):
    _dataset(tmp_path, {}, ROWS[:2], file="hub_copy/data/main/part.jsonl")
    _dataset(tmp_path, {}, ROWS[2:3], file="hub_copy/data/other/part.jsonl")
    entry = {"file_name": "hub_copy", "folder": "data", "subset": "main"}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    cfg = {"dataset_dir": str(tmp_path), "max_samples": None}
    assert _prompts(cfg) == ["q0", "q1"]
    assert resolve_dataset("d", tmp_path).files == [tmp_path / "hub_copy" / "data" / "main" / "part.jsonl"]


REFUSED = {  # entry -> (key named in the error, the fix it gives)
    "hf_hub_url": ({"hf_hub_url": "org/set"}, "huggingface-cli download --repo-type dataset org/set --local-dir"),
    "ms_hub_url": ({"ms_hub_url": "org/set"}, "modelscope download --dataset org/set"),
    "script_url": ({"script_url": "set.py"}, "run the loading script once"),
    "revision": ({"file_name": "d.jsonl", "revision": "v1"}, "download that revision"),
    "columns.images": ({"file_name": "d.jsonl", "columns": {"images": "img"}}, "remove columns.images"),
    "split": ({"file_name": "d.jsonl", "split": "validation"}, "put the rows of that split in their own file"),
    "num_samples": ({"file_name": "d.jsonl", "num_samples": 0}, "positive integer"),
    "folder": ({"file_name": "d.jsonl", "folder": "x"}, "point file_name at that folder, or remove folder"),
    "subset": ({"file_name": "sub", "subset": "cfg"}, "point file_name at its files and remove subset"),
}


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_unusable_keys_are_refused_naming_dataset_key_registry_and_fix(tmp_path, key):
    entry, fix = REFUSED[key]
    (tmp_path / "sub").mkdir()
    _dataset(tmp_path, {})
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(DataError) as caught:
        resolve_dataset("d", tmp_path)
    message = str(caught.value)
    assert f"{tmp_path / 'dataset_info.json'}: dataset 'd'" in message
    assert key in message and "Fix:" in message and fix in message, message


def _hub_copy(root: Path) -> Path:
    """A dataset folder as `huggingface-cli download --repo-type dataset` leaves it: a README, git metadata and
    split-named shards under data/."""
    copy = root / "hub_copy"
    (copy / "data").mkdir(parents=True)
    (copy / "README.md").write_text("---\nconfigs: []\n---\n# a dataset card\n")
    (copy / ".gitattributes").write_text("*.parquet filter=lfs\n")
    for split, rows in (("train_sft", ["a0", "a1", "a2"]), ("test_sft", ["t0"])):
        (copy / "data" / f"{split}-00000-of-00001.jsonl").write_text(
            "".join(json.dumps({"instruction": q, "output": "x"}) + "\n" for q in rows)
        )
    return copy


def test_hub_folder_split_names_and_non_data_files(tmp_path):
    _hub_copy(tmp_path)
    for split, prompts in (("train_sft", ["a0", "a1", "a2"]), ("test_sft", ["t0"]), ("train_sft[1:]", ["a1", "a2"])):
        (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "hub_copy", "split": split}}))
        assert _prompts({"dataset_dir": str(tmp_path), "max_samples": None}) == prompts, split
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "hub_copy", "split": "validation"}}))
    with pytest.raises(DataError, match="no files of split 'validation'.*test_sft, train_sft"):
        resolve_dataset("d", tmp_path)


def test_hub_folder_without_split_names_is_its_train_split(tmp_path):
    copy = tmp_path / "plain"
    (copy / "data").mkdir(parents=True)
    (copy / "README.md").write_text("# card\n")
    (copy / "data" / "rows.jsonl").write_text(json.dumps({"instruction": "q", "output": "x"}) + "\n")
    assert resolve_dataset(str(copy), tmp_path).files == [copy / "data" / "rows.jsonl"]
