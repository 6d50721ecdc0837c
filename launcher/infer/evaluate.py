"""`launch eval`: batched generation over the recipe's eval datasets and LLaMA-Factory's
BLEU-4 / ROUGE scores of the replies (metrics.py).

The prompts are split over the plan's processes (row i to process i mod N, one GPU each where
GPUs are visible); each process writes its shard's predictions, and this process gathers them
in the original order, writes output/generated_predictions.jsonl (prompt, label, prediction, as
LLaMA-Factory's predict does) and predict_results.json (predict_bleu-4, predict_rouge-*, speed).
Generation is transformers' (chat.reply_batch) or vLLM's (eval.engine, eval_vllm.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import EvalError
from launcher.recipe.load import output_folder
from launcher.util.timeouts import recipe_timeout_s

PREDICTIONS, RESULTS = "generated_predictions.jsonl", "predict_results.json"

if TYPE_CHECKING:
    from launcher.recipe.types import EvalSection, Recipe


def eval_folder(recipe: Recipe, recipe_file: str, datasets: list[str] | None, out: str | None, force: bool) -> Path:
    """eval --out (default output.dir/eval), checked before any model or data is read: a folder (made
    if missing) whose two files land on none of the run's inputs or the datasets evaluated, replacing
    earlier predictions only with --force. The model and adapter folders are not among those inputs:
    eval writes its two names, which no model or adapter holds, into output.dir, which is one."""
    from launcher.recipe.inputs import run_inputs
    from launcher.util.output_file import check_output_file

    folder = Path(out) if out else Path(output_folder(recipe)) / "eval"
    if folder.exists() and not folder.is_dir():
        raise EvalError(
            f"--out {folder}: a file, not a folder; eval writes {PREDICTIONS} and {RESULTS} into a folder. "
            "Fix: give --out a folder"
        )
    evaluated = {**recipe["data"], "eval_datasets": datasets or recipe["data"]["eval_datasets"]}
    inputs = run_inputs({**recipe, "data": evaluated}, recipe_file)
    for name in (PREDICTIONS, RESULTS):
        check_output_file("--out", str(folder / name), inputs, force, instead="another folder")
    return folder


@dataclass
class Job:
    model: str
    adapter: str | None
    trust_remote_code: bool
    generation: EvalSection
    seed: int


def generation_sampling(generation: EvalSection):
    from launcher.infer.chat import Sampling

    sample = generation["do_sample"]
    return Sampling(
        generation["max_new_tokens"],
        sample,
        generation["temperature"] if sample else None,
        generation["top_p"] if sample else None,
        generation["top_k"] if sample else None,
    )


def predict_shard(job: Job, conversations: list[list[dict]]) -> tuple[list[str], int, float]:
    """(replies, tokens generated, seconds generating) for these prompts, in their order."""
    from transformers import set_seed

    from launcher.infer.chat import chat_template, load_for_chat, reply_batch

    template = chat_template(job.model, job.adapter)[0]  # prompts rendered as the run trained
    if job.generation["engine"] == "vllm":
        from launcher.infer.eval_vllm import predict_vllm

        started = time.perf_counter()  # vLLM's engine start counts: it is part of generating with it
        replies, tokens = predict_vllm(
            job.model, job.adapter, job.trust_remote_code, job.generation, job.seed, conversations, template
        )
        return replies, tokens, time.perf_counter() - started
    model, tokenizer = load_for_chat(job.model, job.adapter, job.trust_remote_code)
    set_seed(job.seed)
    started = time.perf_counter()
    replies, tokens = reply_batch(
        model, tokenizer, conversations, generation_sampling(job.generation), job.generation["batch_size"], template
    )
    return replies, tokens, time.perf_counter() - started


def load_prompts(recipe: Recipe, datasets: list[str]) -> list[tuple[list[dict], str]]:
    """(conversation up to the last assistant turn, that turn as the label) per eval row."""
    from launcher.data.pipeline import load_examples
    from launcher.errors import DataError

    try:
        examples = load_examples(datasets, recipe["data"], "sft")
    except DataError as err:
        raise EvalError(str(err)) from None
    return [(example.messages[:-1], example.messages[-1]["content"]) for example in examples]


def _default_adapter(recipe: Recipe) -> str | None:
    out = Path(output_folder(recipe))
    return str(out) if (out / "adapter_config.json").is_file() else recipe["model"]["adapter"]


def _run_shards(
    job: Job, prompts: list[list[dict]], processes: int, work: Path, timeout_s: float
) -> tuple[list[str], int, float]:
    """Each shard in its own process (a GPU each where visible); replies gathered in prompt order."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    procs = []
    for rank in range(processes):
        shard = work / f"shard-{rank}.json"
        shard.write_text(json.dumps({"job": asdict(job), "prompts": prompts[rank::processes]}, ensure_ascii=False))
        env = dict(os.environ)
        if gpus is None or gpus:
            visible = gpus.split(",") if gpus else None
            env["CUDA_VISIBLE_DEVICES"] = visible[rank % len(visible)] if visible else str(rank)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "launcher.infer.evaluate", str(shard)],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout_s
    failures = []
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise EvalError(
                f"eval process {rank} did not finish within {timeout_s:.0f} s "
                "(distributed.timeout_minutes). Fix: raise it, or lower eval.max_new_tokens"
            ) from None
        if proc.returncode != 0:
            failures.append(f"process {rank} (exit {proc.returncode}):\n{err[-3000:]}")
    if failures:
        raise EvalError("eval failed in " + "\n".join(failures))
    shards = [json.loads((work / f"shard-{rank}.out.json").read_text()) for rank in range(processes)]
    replies: list[str] = [""] * len(prompts)
    for rank, shard in enumerate(shards):
        replies[rank::processes] = shard["replies"]
    return replies, sum(shard["tokens"] for shard in shards), max(shard["seconds"] for shard in shards)


def evaluate(
    recipe: Recipe, datasets: list[str] | None, model: str | None, adapter: str | None, out: Path, processes: int
) -> dict:
    """Predict every eval row, score it into `out` (eval_folder's); returns predict_results.json's content."""
    from launcher.infer.eval_vllm import choose_engine
    from launcher.infer.metrics import similarity

    adapter = adapter if adapter is not None else _default_adapter(recipe)
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalError(
            f"--adapter {adapter}: no adapter_config.json there. Fix: pass a LoRA run's output.dir "
            "or checkpoint-<step>, or --adapter '' to evaluate the model alone"
        )
    engine = choose_engine(recipe["eval"]["engine"], adapter)  # before any model or data is read
    key = "--dataset" if datasets else "data.eval_datasets"
    datasets = datasets or recipe["data"]["eval_datasets"]
    if not datasets:
        raise EvalError(
            "no eval data: data.eval_datasets is empty. Fix: set data.eval_datasets (e.g. [demo_dev]) "
            "or pass --dataset NAME"
        )
    rows = load_prompts(recipe, datasets)
    if not rows:  # as `launch train` refuses data.datasets without a row
        from launcher.plan.preflight import no_rows_error

        raise EvalError(no_rows_error(key, datasets, recipe["data"], "evaluate"))
    job = Job(
        model or recipe["model"]["path"],
        adapter,
        recipe["model"]["trust_remote_code"],
        {**recipe["eval"], "engine": engine},
        recipe["train"]["seed"],
    )
    processes = max(1, min(processes, len(rows)))
    prompts = [messages for messages, _ in rows]
    started = time.perf_counter()
    if processes == 1:
        replies, tokens, generating = predict_shard(job, prompts)
    else:
        with tempfile.TemporaryDirectory(prefix="launch-eval-") as work:  # the shards' files: scratch, not --out's
            replies, tokens, generating = _run_shards(job, prompts, processes, Path(work), recipe_timeout_s(recipe))
    runtime = time.perf_counter() - started
    labels = [label for _, label in rows]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / PREDICTIONS, "w", encoding="utf-8") as file:
        for prompt, label, reply in zip(prompts, labels, replies):
            file.write(json.dumps({"prompt": prompt, "label": label, "prediction": reply}, ensure_ascii=False) + "\n")
    results: dict[str, Any] = {f"predict_{name}": value for name, value in similarity(replies, labels).items()}
    results.update(
        predict_samples=len(rows),
        predict_runtime=round(runtime, 4),
        predict_samples_per_second=round(len(rows) / runtime, 3),
        generation_seconds=round(generating, 4),
        generated_tokens=tokens,
        generation_tokens_per_second=round(tokens / max(generating, 1e-9), 3),
        processes=processes,
        engine=engine,
        model=job.model,
        adapter=job.adapter,
        datasets=datasets,
    )
    (out / RESULTS).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def _shard_main(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    replies, tokens, seconds = predict_shard(Job(**spec["job"]), spec["prompts"])
    Path(path).with_suffix(".out.json").write_text(
        json.dumps({"replies": replies, "tokens": tokens, "seconds": seconds}, ensure_ascii=False)
    )


if __name__ == "__main__":
    _shard_main(sys.argv[1])
