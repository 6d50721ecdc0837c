"""`launch eval`: predictions on the bundled dev set equal transformers' own greedy generate, the scores
are LLaMA-Factory's (jieba + nltk sentence_bleu method3 + rouge-chinese, checked against those packages
called directly), and 2 processes give the same output as 1."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import greedy, run_launch

pytest.importorskip("jieba")
TOKENS = 4
ROWS = 4
BASE = [
    "recipes/sft_tiny.yaml",
    "--dataset",
    "demo_dev",
    f"eval.max_new_tokens={TOKENS}",
    f"data.max_samples={ROWS}",
    "eval.batch_size=3",
    "--adapter",
    "",
]


def _reference(prediction: str, label: str) -> dict:
    """LLaMA-Factory's per-example scores, straight from the packages."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hyp, ref = list(jieba.cut(prediction)), list(jieba.cut(label))
    if not " ".join(hyp).split() or not " ".join(ref).split():
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        rouge = {k: round(v["f"] * 100, 4) for k, v in Rouge().get_scores(" ".join(hyp), " ".join(ref))[0].items()}
    bleu = sentence_bleu([list(label)], list(prediction), smoothing_function=SmoothingFunction().method3)
    return {**rouge, "bleu-4": round(bleu * 100, 4)}


def _mean(pairs: list[tuple[str, str]]) -> dict:
    scores = [_reference(p, l) for p, l in pairs]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


PAIRS = [
    ("乘法表示几个相同的数相加", "乘法表示相同的数相加，所以结果是0。"),
    ("The cat sat on the mat.", "A cat sat on a mat."),
    ("", "cold"),
    ("早上好", "早上好"),
]


@pytest.mark.multiproc
def test_metrics_equal_the_reference_packages():
    from launcher.infer.metrics import similarity

    ours = similarity([p for p, _ in PAIRS], [l for _, l in PAIRS])
    assert ours == pytest.approx(_mean(PAIRS), abs=1e-9)
    assert 0 < ours["bleu-4"] < 100 and 0 < ours["rouge-l"] < 100


@pytest.mark.multiproc
def test_predictions_and_metrics_on_the_dev_set_and_two_processes_equal_one(tmp_path, warm):
    outputs = {}
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        proc = run_launch(
            ["eval", *BASE, f"output.dir={tmp_path / 'run'}", "--nproc", str(nproc), "--out", str(out)], timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
        outputs[nproc] = (rows, json.loads((out / "predict_results.json").read_text()))
    rows, results = outputs[1]
    dev = json.loads(open("data/demo_dev.json", encoding="utf-8").read())[:ROWS]
    assert [r["label"] for r in rows] == [d["output"] for d in dev]
    assert [r["prediction"] for r in rows] == [greedy(r["prompt"], TOKENS) for r in rows]
    expected = _mean([(r["prediction"], r["label"]) for r in rows])
    for name, value in expected.items():
        assert results[f"predict_{name}"] == pytest.approx(value, abs=1e-9)
    assert results["predict_samples"] == ROWS and results["generated_tokens"] > 0
    assert outputs[2][0] == rows and outputs[2][1]["processes"] == 2
    assert {
        k: v for k, v in outputs[2][1].items() if k.startswith("predict_bleu") or k.startswith("predict_rouge")
    } == {k: v for k, v in results.items() if k.startswith("predict_bleu") or k.startswith("predict_rouge")}


@pytest.mark.multiproc
def test_no_eval_data_is_refused(tmp_path):
    proc = run_launch(["eval", "recipes/sft_tiny.yaml", f"output.dir={tmp_path}", "--adapter", ""], timeout=120)
    assert proc.returncode == 2 and "data.eval_datasets" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.multiproc
def test_an_empty_dev_set_is_refused_before_any_process_starts(tmp_path):
    """As `launch train` refuses datasets without a row; it used to start the shards and fail in the scoring."""
    empty = tmp_path / "dev.jsonl"
    empty.write_text("")
    out = tmp_path / "run"
    args = ["recipes/sft_tiny.yaml", f"output.dir={out}", "--adapter", "", "--dataset", str(empty), "--nproc", "2"]
    proc = run_launch(["eval", *args], timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"--dataset = ['{empty}']: no rows in {empty}" in proc.stderr and "nothing to evaluate. Fix:" in proc.stderr
    assert "[chat]" not in proc.stderr and not out.exists()  # no model loaded, no shard folder written


def _scalars(out) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "runs"))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.multiproc
def test_eval_generate_logs_the_scores_launch_eval_gives_the_same_checkpoint(tmp_path, warm):
    # oracle: `launch eval` of the checkpoint saved at that eval step, with the same eval settings
    settings = [
        "data.eval_datasets=[demo_dev]",
        f"data.max_samples={ROWS}",
        "eval.max_new_tokens=8",
        "eval.batch_size=3",
    ]
    out = tmp_path / "run"
    proc = run_launch(
        [
            "recipes/sft_tiny.yaml",
            f"output.dir={out}",
            *settings,
            "train.eval_generate=true",
            "train.max_steps=2",
            "train.eval_steps=2",
            "train.save_steps=2",
            "train.grad_accum=1",
            "train.logging_steps=1",
            "distributed.engine=ddp",
            "distributed.zero=0",
            "distributed.nproc_per_node=1",
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    scalars = _scalars(out)
    proc = run_launch(
        [
            "eval",
            "recipes/sft_tiny.yaml",
            f"output.dir={out}",
            *settings,
            "--adapter",
            str(out / "checkpoint-2"),
            "--nproc",
            "1",
            "--out",
            str(tmp_path / "eval"),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    oracle = json.loads((tmp_path / "eval" / "predict_results.json").read_text())
    assert oracle["predict_bleu-4"] > 0  # the replies share something with the labels: the scores are not trivial
    for name in ("bleu-4", "rouge-1", "rouge-2", "rouge-l"):
        assert scalars[f"eval/{name}"] == [(2, pytest.approx(oracle[f"predict_{name}"], abs=1e-4))], name


@pytest.mark.unit
def test_eval_generate_needs_sft_with_eval_datasets():
    proc = run_launch(["plan", "recipes/sft_tiny.yaml", "train.eval_generate=true"], timeout=60)
    assert (
        proc.returncode == 2 and "train.eval_generate" in proc.stderr and "Fix: set data.eval_datasets" in proc.stderr
    )


@pytest.mark.multiproc
def test_engine_vllm_is_refused_where_it_cannot_run(tmp_path):
    # this suite runs without vLLM or a GPU: auto uses transformers (the test above), an explicit vllm is refused
    from launcher.kernels.choice import installed

    if installed("vllm"):
        pytest.skip("vLLM is installed here")
    proc = run_launch(["eval", *BASE, "eval.engine=vllm", f"output.dir={tmp_path}"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "eval.engine: vllm, but vLLM is not installed" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "eval").exists()


@pytest.mark.multiproc
def test_imported_lf_predict_config_evaluates_its_eval_datasets_with_lfs_timeout(tmp_path, warm):
    """An LF predict YAML (eval_dataset only, ddp_timeout: 180000000) through `launch import-lf --predict`:
    `launch eval` reads only its eval datasets (the default data.datasets is not in this dataset_dir) and
    waits on two shard processes without OverflowError (the timeout capped at the OS's longest wait)."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy("data/demo_dev.json", data / "demo_dev.json")
    info = json.loads(open("data/dataset_info.json", encoding="utf-8").read())
    (data / "dataset_info.json").write_text(json.dumps({"demo_dev": info["demo_dev"]}))
    recipe = tmp_path / "eval.yaml"
    proc = run_launch(["import-lf", "tests/lf_configs/lora_predict.yaml", "--predict", "--out", str(recipe)])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "eval"
    args = [f"data.dataset_dir={data}", "data.max_samples=2", "eval.max_new_tokens=2", f"output.dir={tmp_path}/r"]
    proc = run_launch(["eval", str(recipe), *args, "--adapter", "", "--nproc", "2", "--out", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "predict_results.json").read_text())["predict_samples"] == 2
