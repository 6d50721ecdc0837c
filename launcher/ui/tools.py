"""The page's Chat, Export and Evaluate tabs: `launch chat`, `launch merge`, `launch consolidate` and
`launch eval` over a run or recipe under the root, each a child `launch` process (cwd = the root, no shell) whose argument list is built
here from checked fields, so the page loads no model and a refusal is the CLI's own line. Chat and Export give a
relay Task: their replies and progress lines reach the page while the child runs."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from launcher.infer.evaluate import PREDICTIONS, RESULTS  # torch-free at import
from launcher.ui.jobs import NAME, JobRefused, recipe_path
from launcher.ui.relay import Child, Task, task
from launcher.ui.runs import inside

PREDICTIONS_SHOWN = 200  # rows of generated_predictions.jsonl the page gets; the file holds them all
CHECKPOINT = re.compile(r"checkpoint-\d+")
DTYPES = ("fp32", "bf16", "fp16")
CHAT_DTYPES = ("auto", *DTYPES)
LOAD_IN = ("", "4bit", "8bit")  # "": the weights as dtype says


def _run_folder(root: Path, name: Any) -> tuple[Path, dict]:
    """A run folder under the root and the recipe its plan.json holds."""
    folder = inside(root, str(name or ""))
    try:
        recipe = json.loads((folder / "plan.json").read_text(encoding="utf-8"))["recipe"]
    except (OSError, ValueError, KeyError) as err:
        raise JobRefused(f"{name}: no run there ({err}). Fix: pick one of the listed runs") from None
    return folder, recipe


def _choice(body: dict, field: str, allowed: tuple[str, ...], default: str) -> str:
    value = str(body.get(field) or default)
    if value not in allowed:
        raise JobRefused(f"{field}: {value!r} is not one of {', '.join(allowed)}. Fix: pick one of them")
    return value


def _number(body: dict, field: str, kind: type) -> list[str]:
    value = body.get(field)
    if value in (None, ""):
        return []
    try:
        return [f"--{field.replace('_', '-')}", str(kind(value))]
    except (TypeError, ValueError):
        raise JobRefused(f"{field}: {value!r} is not a {kind.__name__}. Fix: a number, or leave it empty") from None


def _reply(stdout: str) -> str:
    """The assistant's text of `launch chat --prompt P`'s `user> P\\nassistant> A` lines."""
    _, _, answer = stdout.partition("assistant> ")
    return answer.rstrip("\n")


def chat(root: Path, body: dict) -> Task:
    """One prompt answered by the run's adapter on its base model with the run's template (`launch chat`
    reads both from the run's plan.json); with "compare", the base model alone answers beside it."""
    folder, recipe = _run_folder(root, body.get("run"))
    prompt = str(body.get("prompt") or "")
    if not prompt.strip():
        raise JobRefused("prompt: empty. Fix: type a message")
    args = ["chat", "--model", recipe["model"]["path"], "--prompt", prompt]
    args += ["--dtype", _choice(body, "dtype", CHAT_DTYPES, "auto")]
    load_in = _choice(body, "load_in", LOAD_IN, "")
    args += ["--load-in", load_in] if load_in else []
    for field, kind in (("max_new_tokens", int), ("temperature", float), ("top_p", float), ("top_k", int)):
        args += _number(body, field, kind)
    args += _number(body, "seed", int)
    if body.get("do_sample"):
        args.append("--do-sample")
    if str(body.get("system") or "").strip():
        args += ["--system", str(body["system"])]
    runs = {"reply": [*args, "--adapter", str(folder)]}
    if body.get("compare"):
        runs["base_reply"] = args  # beside it, at once
    return task(root, runs, lambda outputs: {"ok": True, **{f: _reply(text) for f, text in outputs.items()}}, _reply)


def _new_folder(root: Path, out: Any) -> Path:
    path = inside(root, str(out or ""))
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise JobRefused(f"out: {out} already holds files. Fix: a new folder name")
    return path


def merge(root: Path, body: dict) -> Task:
    """The run's LoRA adapter folded into its base model, written to a new folder under the root."""
    folder, recipe = _run_folder(root, body.get("run"))
    out = _new_folder(root, body.get("out"))
    dtype = _choice(body, "dtype", DTYPES, "fp32")
    args = ["merge", "--base", recipe["model"]["path"], "--adapter", str(folder), "--out", str(out), "--dtype", dtype]
    return _export(root, args, out)


def _export(root: Path, args: list[str], out: Path) -> Task:
    """A merge or consolidate: its output lines (stdout and stderr, progress included) as they come."""
    written = str(out.relative_to(root))
    return task(
        root, {"output": args}, lambda outputs: {"ok": True, "output": outputs["output"], "out": written}, merged=True
    )


def _checkpoint(folder: Path, body: dict) -> Path:
    checkpoint = str(body.get("checkpoint") or "")
    if not CHECKPOINT.fullmatch(checkpoint) or not (folder / checkpoint).is_dir():
        raise JobRefused(f"checkpoint: {checkpoint!r} is not one of the run's. Fix: pick one the run lists")
    return folder / checkpoint


def consolidate(root: Path, body: dict) -> Task:
    """One of the run's sharded checkpoints as a PEFT adapter or HF model in a new folder under the root."""
    folder, _ = _run_folder(root, body.get("run"))
    checkpoint = _checkpoint(folder, body)
    out = _new_folder(root, body.get("out"))
    args = ["consolidate", str(checkpoint), "--out", str(out)]
    return _export(root, args, out)


def evaluate(root: Path, body: dict) -> dict:
    """`launch eval recipes/NAME.yaml` on the chosen datasets (default: the recipe's data.eval_datasets) with
    a run's adapter or one of its checkpoints (default: the recipe's output.dir); its scores and predictions."""
    recipe = recipe_path(root, str(body.get("name") or ""))
    if not recipe.is_file():
        raise JobRefused(f"{recipe.relative_to(root)}: no such recipe. Fix: Save the recipe on the Train tab first")
    args = ["eval", str(recipe.relative_to(root))]
    for dataset in str(body.get("datasets") or "").replace(",", " ").split():
        if not NAME.fullmatch(dataset):
            raise JobRefused(f"datasets: {dataset!r} is not a dataset name. Fix: names from dataset_info.json")
        args += ["--dataset", dataset]
    if body.get("run"):
        folder, _ = _run_folder(root, body["run"])
        args += ["--adapter", str(_checkpoint(folder, body) if body.get("checkpoint") else folder)]
    out = _new_folder(root, body.get("out"))
    Child(root, [*args, "--out", str(out)], threading.Condition()).wait()

    rows = (out / PREDICTIONS).read_text(encoding="utf-8").splitlines()[:PREDICTIONS_SHOWN]
    return {
        "ok": True,
        "out": str(out.relative_to(root)),
        "scores": json.loads((out / RESULTS).read_text(encoding="utf-8")),
        "predictions": [json.loads(row) for row in rows],
    }
