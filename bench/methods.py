"""Methods benchmark: peak memory and step time per method and ZeRO stage, next to the memory
planner's estimate (what `launch plan` prints), on CPU.

For the tiny builtin model and a ~78M-parameter Qwen2-shaped model (12 layers, width 768, the
builtin tokenizer's 2048-token vocabulary; weights made from a seed into the work folder), each
method (full, freeze, lora, qlora 4-bit, prefix) runs a few optimizer steps through the real
CLI (`launch`, 2 CPU processes over gloo) under ZeRO-0/2/3 (or, --variants, FSDP2 with and without
offload, or ZeRO-3 or FSDP2 with Ulysses sequence parallelism 1 and 2) where the recipe allows it. While a
run lasts, every rank's anonymous resident memory (RssAnon in /proc/<pid>/status: heap and
tensors, not the mapped libraries and files) is sampled every 20 ms (--sample-ms), and rank 1's peak is
compared with the estimate: transformers maps the safetensors file, so frozen weights stay in
the page cache on rank 0 (not anonymous memory), while on rank 1 DeepSpeed's initial broadcast
from rank 0 writes into them, so rank 1 holds the whole model in its own memory, as a GPU would.
Step time = the Trainer's train_runtime / steps.
Writes the section "## Methods: memory estimate vs measured" of docs/benchmarks.md.

    python bench/methods.py [--steps 3] [--models tiny,qwen2-78m[,qwen2-0.5b]] [--json rows.json] [--out docs/benchmarks.md]
    python bench/methods.py --variants fsdp ...                 # FSDP2, FSDP2 + offload all instead of ZeRO-0/2/3
    python bench/methods.py --variants sp --cutoff-len 2048 ... # ZeRO-3 with sequence_parallel 1 and 2
    python bench/methods.py --variants fsdp_sp --cutoff-len 2048 ... # FSDP2 with sequence_parallel 1 and 2
    python bench/methods.py --rerender rows.json   # the same measurements against the current planner
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the repo's `launcher` without installing it

from bench.overhead import base_env, free_port, machine, versions, write_section  # noqa: E402
from launcher.plan import build_plan  # noqa: E402
from launcher.plan.memory import GIB, OVERHEAD_GB  # noqa: E402
from launcher.recipe.load import RecipeError, load_recipe  # noqa: E402

TINY = "recipes/sft_tiny.yaml"
SECTION = "## Methods: memory estimate vs measured"
TARGET = 0.15
MIB = 1024**2
# Seeded Qwen2-shaped models with the builtin tokenizer. ~78M parameters: the 50-100M CPU-sized model
# issues 4 and 8 ask for. qwen2-0.5b: Qwen/Qwen2-0.5B's shape and 151,936-token vocabulary (the logits
# term dominates its activations), the size issue 8 asks for on a GPU, here on CPU (opt-in: slow).
SHAPES = {
    "qwen2-78m": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "max_window_layers": 12,
        "initializer_range": 0.02,
    },
    "qwen2-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_window_layers": 24,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
    },
}
METHODS = {
    "full": ["method.name=full"],
    "freeze": ["method.name=freeze", "method.trainable_layers=2"],
    "lora": ["method.name=lora", "method.rank=8", "method.target=all"],
    "qlora-4bit": ["method.name=lora", "method.rank=8", "method.target=all", "model.quantization.bits=4"],
    "prefix": ["method.name=prefix", "train.gradient_checkpointing=false"],
}
# How the ranks share each run, compared with the plan's memory option of the same (zero, offload):
# DeepSpeed's ZeRO stages, FSDP2 with and without offload, Ulysses sequence parallelism under ZeRO-3.
VARIANTS = {
    "zero": [{"engine": "deepspeed", "zero": zero, "offload": "none", "sp": 1} for zero in (0, 2, 3)],
    "fsdp": [{"engine": "fsdp", "zero": 0, "offload": offload, "sp": 1} for offload in ("none", "all")],
    "sp": [{"engine": "deepspeed", "zero": 3, "offload": "none", "sp": sp} for sp in (1, 2)],
    "fsdp_sp": [{"engine": "fsdp", "zero": 0, "offload": "none", "sp": sp} for sp in (1, 2)],
}
# Rows measured before the variants existed are ZeRO runs: what their missing keys mean.
ZERO_ROW = {"engine": "deepspeed", "offload": "none", "sp": 1}
CUTOFF_LEN = 128
EARLIER_VERSIONS = (
    "Python 3.11.7, torch 2.13.0+cpu, transformers 5.23.0, deepspeed 0.19.8, peft 0.21.2, accelerate 1.15.0"
)
# Every run: a few steps of packed rows (so each micro batch holds exactly cutoff_len tokens, the
# length the planner assumes), no checkpoint until the final save, no TensorBoard.
COMMON = [
    "model.dtype=fp32",
    "data.packing=greedy",
    "train.micro_batch_size=2",
    "train.grad_accum=1",
    "train.save_steps=100000",
    "train.logging_steps=1",
    "output.report_to=[none]",
    "output.overwrite=true",
]


def make_model(name: str) -> str:
    """A seeded Qwen2 model of SHAPES[name] with the builtin tokenizer, cached beside the builtin models."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from launcher.model.builtin import builtin_cache_dir, builtin_source_dir

    folder = builtin_cache_dir().parent / "bench" / name
    if (folder / "model.safetensors").is_file():
        return str(folder)
    source = builtin_source_dir("builtin:tiny-qwen2")
    config = Qwen2Config(**{**json.loads((source / "config.json").read_text()), **SHAPES[name]})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / file, folder / file)
    return str(folder)


def _rank_pids(plan_file: str) -> dict[int, int]:
    """{rank: pid} of the worker processes running this plan."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"launcher.worker" not in cmd or plan_file.encode() not in cmd:
                continue
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
            found[int(env[b"RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError):
            continue
    return found


def _rss_anon(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


SAMPLE_MS = 20  # how often the ranks' RssAnon is read; a peak shorter than this (a small model's loss) can be missed


def sample_peaks(plan_file: str, done: threading.Event, peaks: dict[int, int], period: float) -> None:
    """Until `done`: the highest RssAnon seen of each rank of the plan."""
    pids: dict[int, int] = {}
    while not done.is_set():
        if len(pids) < 2:
            pids = _rank_pids(plan_file)
        for rank, pid in pids.items():
            rss = _rss_anon(pid)
            if rss is not None:
                peaks[rank] = max(peaks.get(rank, 0), rss)
        time.sleep(period)


def bench_recipe(work: Path) -> Path:
    """recipes/sft_tiny.yaml without its method keys, so each run's overrides choose the method."""
    raw = yaml.safe_load((ROOT / TINY).read_text())
    raw["method"] = {}
    path = work / "bench_methods.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def variant_overrides(variant: dict, cutoff_len: int) -> list[str]:
    """The recipe keys of one variant (VARIANTS) at one sequence length."""
    return [
        f"data.cutoff_len={cutoff_len}",
        f"distributed.engine={variant['engine']}",
        f"distributed.zero={variant['zero']}",
        f"distributed.offload={variant['offload']}",
        f"distributed.sequence_parallel={variant['sp']}",
        # beyond the model's context, linear RoPE scaling by LF's rule (factor = cutoff_len / context, rounded up)
        *(["model.rope_scaling={type: linear}"] if variant.get("long") else []),
    ]


def _overrides(model_path: str, method: str, variant: dict, cutoff_len: int, steps: int) -> list[str]:
    return [
        f"model.path={model_path}",
        *COMMON,
        *METHODS[method],
        *variant_overrides(variant, cutoff_len),
        f"train.max_steps={steps}",
    ]


def estimate_for(
    recipe_file: Path, model_path: str, method: str, variant: dict, cutoff_len: int, loss: str = "auto"
) -> dict:
    """The planner's memory section for one run (loss: the loss kernel it trained with), and its option for the
    run's (zero, offload)."""
    overrides = [*_overrides(model_path, method, variant, cutoff_len, 1), f"train.loss_kernel={loss}"]
    recipe = load_recipe(recipe_file, overrides)
    memory = build_plan(recipe, cwd=str(ROOT))["memory"]
    option = next(o for o in memory["options"] if (o["zero"], o["offload"]) == (variant["zero"], variant["offload"]))
    return {
        "estimate_gb": option["total_gb"],
        "label": option["label"] + (f", SP {variant['sp']}" if variant["sp"] > 1 else ""),
        "trainable": memory["params_trainable"],
        "total": memory["params_total"],
    }


# glibc keeps freed blocks below its (dynamic, up to 32 MB) mmap threshold in its arenas, so a
# rank's RSS also holds memory that torch has freed; with these settings freed tensors go back to
# the OS and RssAnon follows the live tensors (a single-process LoRA step: +27 MB instead of +250 MB)
TIGHT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def launch_with_peaks(
    recipe_file: Path, overrides: list[str], log: Path, env: dict[str, str], sample_ms: int = SAMPLE_MS
) -> tuple[int, dict, dict]:
    """Run `launch RECIPE OVERRIDES` (output to log): its exit code, each rank's peak RssAnon (bytes) and its plan."""
    plan = build_plan(load_recipe(recipe_file, overrides), cwd=str(ROOT))
    peaks: dict[int, int] = {}
    done = threading.Event()
    sampler = threading.Thread(
        target=sample_peaks, args=(plan["plan_file"], done, peaks, sample_ms / 1000), daemon=True
    )
    sampler.start()
    with log.open("w") as sink:
        code = subprocess.run(
            [sys.executable, "-m", "launcher.cli", str(recipe_file), *overrides],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=1800,
        ).returncode
    done.set()
    sampler.join()
    return code, peaks, plan


def run_one(
    recipe_file: Path,
    model_path: str,
    method: str,
    variant: dict,
    cutoff_len: int,
    steps: int,
    work: Path,
    env: dict[str, str],
    sample_ms: int = SAMPLE_MS,
) -> dict:
    """One `launch` run: the measured peaks and the step time (the row carries the variant's keys)."""
    name = "-".join(str(v) for v in variant.values())
    out = work / f"{Path(model_path).name}-{method}-{name}-{cutoff_len}"
    overrides = [
        *_overrides(model_path, method, variant, cutoff_len, steps),
        f"output.dir={out}",
        f"distributed.master_port={free_port()}",
    ]
    log = work / "run.log"
    code, peaks, plan = launch_with_peaks(recipe_file, overrides, log, env, sample_ms)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        sys.exit(f"[bench] {method} {variant} on {model_path} failed with exit code {code}\n{tail}")
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = next(e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e)
    shutil.rmtree(out)
    return {
        "method": method,
        **variant,
        "cutoff_len": cutoff_len,
        "rank0_gb": peaks.get(0, 0) / GIB,
        "rank1_gb": peaks.get(1, 0) / GIB,
        "step_s": runtime / state["global_step"],
        "loss_kernel": plan["kernels"]["loss"],
    }


def allowed(recipe_file: Path, method: str, variant: dict) -> bool:
    """The recipe validation's answer (prefix cannot save under ZeRO-3, QLoRA cannot run under FSDP2, ...)."""
    try:
        load_recipe(recipe_file, [*COMMON, *METHODS[method], *variant_overrides(variant, CUTOFF_LEN)])
    except RecipeError:
        return False
    return True


MODELS = {
    "tiny": "builtin:tiny-qwen2 (4 layers, width 128, vocab 2048)",
    **{
        name: "A seeded Qwen2 model: "
        + ", ".join(f"{k} {v}" for k, v in shape.items() if k != "initializer_range")
        + ("" if "vocab_size" in shape else ", vocab 2048")
        + " (the builtin tokenizer)."
        for name, shape in SHAPES.items()
    },
}


def model_path(name: str) -> str:
    return "builtin:tiny-qwen2" if name == "tiny" else make_model(name)


def _table(title: str, model: str, model_rows: list[dict], recipe_file: Path, run_versions: str | None) -> list[str]:
    """One model's runs next to what the current planner estimates for them."""
    overhead = OVERHEAD_GB["cpu"]
    lines = [
        f"### {title}",
        "",
        MODELS[model] + (f" Versions: {run_versions}." if run_versions else ""),
        "",
        "| method | option | cutoff_len | trainable | estimate GiB | measured GiB, rank 1 (rank 0) | error | "
        "model part: est / meas MiB | step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    errors = []
    for r in model_rows:
        variant = {key: r.get(key, ZERO_ROW.get(key)) for key in ("engine", "zero", "offload", "sp")}
        cutoff_len = r.get("cutoff_len", CUTOFF_LEN)
        # runs recorded before the loss kernels (2026-12-03) trained with transformers' loss: plain
        est = estimate_for(
            recipe_file, model_path(model), r["method"], variant, cutoff_len, r.get("loss_kernel", "plain")
        )
        measured = r["rank1_gb"]
        errors.append(est["estimate_gb"] / measured - 1)
        est_part, meas_part = (est["estimate_gb"] - overhead) * 1024, (measured - overhead) * 1024
        lines.append(
            f"| {r['method']} | {est['label']} | {cutoff_len} | {est['trainable']:,} | {est['estimate_gb']:.3f} | "
            f"{measured:.3f} ({r['rank0_gb']:.3f}) | {errors[-1]:+.1%} | "
            f"{est_part:.0f} / {meas_part:.0f} | {r['step_s']:.2f} |"
        )
    within = sum(abs(e) <= TARGET for e in errors)
    return lines + [
        "",
        f"{within} of {len(errors)} runs within {TARGET:.0%}; largest error {max(errors, key=abs):+.1%}.",
        "",
    ]


def render(runs: list[dict], recipe_file: Path) -> str:
    """The section: each run's measurement next to what the current planner estimates for it."""
    overhead = OVERHEAD_GB["cpu"]
    lines = [
        SECTION,
        "",
        f"Generated by `python bench/methods.py --steps {runs[0]['steps']} [--tight-malloc] [--models ...] "
        "[--methods ...] [--variants zero|fsdp|sp|fsdp_sp] [--cutoff-len N] --json ...` runs (one table per run and model; the measurements are in bench/results/), "
        "rendered together with `--rerender`, on "
        f"{datetime.now(timezone.utc):%Y-%m-%d} (UTC).",
        "",
        f"- Machine: {machine()}.",
        f"- Versions: as a table says; tables without a line of their own (measured before runs recorded them): "
        f"{EARLIER_VERSIONS}.",
        "- Each run: `launch recipes/sft_tiny.yaml` (its method keys removed) with "
        + " ".join(f"`{o}`" for o in COMMON)
        + f", the method's keys, `train.max_steps={runs[0]['steps']}`, `data.cutoff_len` as in the table "
        f"(default {CUTOFF_LEN}) and the option's `distributed.engine`, `zero`, `offload` and `sequence_parallel` "
        "(`--variants`: "
        + "; ".join(
            f"{name}: "
            + ", ".join(f"{v['engine']} zero {v['zero']} offload {v['offload']} sp {v['sp']}" for v in variants)
            for name, variants in VARIANTS.items()
        )
        + "); 2 CPU processes (gloo).",
        "- malloc: `tight` runs the ranks with "
        + " ".join(f"`{k}={v}`" for k, v in TIGHT_MALLOC.items())
        + " so that memory torch frees goes back to the OS and RSS follows the live tensors (what the planner "
        "counts; a GPU's caching allocator is the analogue); `glibc default` is what a user's run gets: freed "
        "blocks below glibc's dynamic mmap threshold stay in its arenas.",
        "- measured = peak anonymous resident memory (RssAnon, sampled every 20 ms unless a table says otherwise) of rank 1 over the whole run. "
        "Not rank 0: transformers maps the safetensors file, so rank 0's frozen weights stay in the page cache "
        "(file-backed, not in RssAnon; rank 0's peak is shown in brackets), while DeepSpeed's initial broadcast from "
        "rank 0 writes rank 1's copy into its own memory, as on a GPU.",
        f"- estimate = the `total` column `launch plan` prints for that ZeRO stage: model states + activations + "
        f"the fixed CPU overhead ({overhead} GiB, the Python/torch/transformers/DeepSpeed runtime, data and "
        "Trainer of one rank). That constant is the one fitted number: the tiny model's tensors are a few MB, so "
        "its rows measure mostly the runtime; the 78M model's rows test the formulas. "
        "model part = estimate and measured less that constant.",
        f"- Target: estimate within {TARGET:.0%} of measured.",
        "",
    ]
    for run in runs:
        for model, model_rows in run["rows"].items():
            sampled = run.get("sample_ms", SAMPLE_MS)
            title = f"{model}, {run.get('variants', 'zero')}, {run['malloc']} malloc" + (
                f", sampled every {sampled} ms" if sampled != SAMPLE_MS else ""
            )
            lines += _table(title, model, model_rows, recipe_file, run.get("versions"))
    return "\n".join(lines + FINDINGS)


FINDINGS = [
    "### What the comparison showed",
    "",
    "- Terms added to the planner after earlier runs of this benchmark, each traced to a mechanism rather than "
    "fitted: ZeRO-3 keeps gathered parameters resident up to `stage3_max_live_parameters` (1e9 in our templates, "
    "i.e. the whole of any model below 1B parameters), not one layer, but k-bit linears, counted whole already, "
    "are not counted again; torch's foreach AdamW allocates a temporary the size of the second moment at every "
    "step; ZeRO-1/2/3 flatten the gradient partition into a new fp32 buffer for the step. The estimates above "
    "are the current planner's (`--rerender` recomputes them for stored measurements in bench/results/).",
    "- Fixed in the launcher, not the planner: runs with a frozen base under ZeRO-0/2 (freeze, LoRA, prefix) "
    "peaked 15-26% above the estimate, at the final save. transformers' Trainer.save_model took the state dict "
    "through accelerate, which under ZeRO-0/1/2 clones every tensor of the model into CPU memory on every rank "
    "(on a GPU machine: host memory, the whole base per GPU at every checkpoint). launcher/checkpoint/model_save.py "
    "saves from the live tensors instead; the 78M LoRA ZeRO-0 peak fell from 1.005 to 0.725 GiB.",
    "- The tiny model's rows test little beyond the fixed overhead (its tensors are a few MB). The "
    "Qwen2-0.5B-shaped rows (`--models qwen2-0.5b`, opt-in: about 15 minutes) test the planner at the size "
    "issue 8 names for a GPU, with the real 151,936-token vocabulary, whose logits dominate the activations; "
    "full fine-tuning was left out (some 10 GB per rank, two ranks on a 24 GB machine); the runs predate the "
    "chunked loss, so they are estimated with transformers' plain loss they trained with. Under ZeRO-3 rank 0 peaks higher than rank 1 "
    "(freeze: 4.43 against 3.85 GiB) while the final save gathers the model on it, which the planner does not "
    "count; its estimate is still within 7% of rank 0.",
    "- With glibc's default malloc the 78M runs hold up to some 400 MB per rank more than the planner counts "
    "(QLoRA most: each forward and backward dequantizes every linear weight into short-lived fp32 tensors). That "
    "is freed memory glibc keeps in its arenas, not live tensors: a single-process probe (the 78M model, LoRA, "
    "forward and backward with checkpointing, no DeepSpeed) grows by about 250 MB over its loaded size with the "
    "default malloc and by about 27 MB (the activation estimate) with the tight settings. So the tight-malloc "
    "tables test the planner's formulas (the analogue of a GPU's allocated memory); the default tables show the "
    "RSS a CPU user will see, which the planner does not model.",
    "- For ZeRO-3 each rank briefly holds the whole model while transformers loads the checkpoint; the "
    "planner counts training, not loading.",
    "- FSDP2 (`--variants fsdp`, 2026-12-07): the first run put the 78M full fine-tuning 17% above its measured "
    "peak. The planner counted torch AdamW's sqrt temporary for every parameter at once, which holds where the "
    "step runs foreach (torch's default on CUDA) or on DeepSpeed's one flat fp32 buffer (the ZeRO rows above), "
    "but torch turns foreach off for CPU tensors, and FSDP2 keeps one tensor per parameter: the step takes one "
    "shard at a time. The planner now counts the largest shard there (launcher/plan/memory.py, adam_temporary; "
    "tests/engines/test_fsdp_plan.py). `offload: all` is the same run on a CPU-only machine: the host is the "
    "device (this benchmark found that it crashed in fully_shard, whose CPUOffloadPolicy pins memory, which needs "
    "an accelerator; the plan now offloads nothing there). The tiny model's FSDP2 ranks hold some 30 MB less "
    "than the fixed CPU overhead (fitted on DeepSpeed ranks). Rank 0 peaks above rank 1 (78M LoRA: 0.86 against "
    "0.62 GiB): the final save gathers a full state dict, frozen base included, on rank 0 before the adapter's "
    "keys are picked; the planner counts training, not the save.",
    "- Sequence parallelism (`--variants sp --cutoff-len 2048`: ZeRO-3 with sequence_parallel 1 and 2 at a length "
    "where activations and logits weigh): the estimates are within 7% of the measured peaks; "
    '`bench/parallelism.py --sp` (section "Parallelism: sequence parallelism memory") has longer lengths and '
    "the longest length each degree fits in a budget.",
    "- The loss term (2026-12-08): long micro batches (2 rows of 15-30k tokens, bench/parallelism.py --sp) showed "
    "the planner 53-61% above the peaks. It summed the recomputed decoder layer and the loss, and counted 16-18 "
    "bytes per logit; the loss peaks first in backward at 12 bytes per logit (the fp32 log-softmax, its gradient "
    "and the logits' gradient: the Trainer drops the outputs before backward), and the layer is recomputed only "
    "after the loss's buffers are freed, so the peak holds the larger of the two. The chunked loss holds one "
    "512-token slice. Every table here is rerendered with that planner. The same day the fixed CPU overhead was "
    "refitted to 0.33 GiB on runs of the current code (0.39 before ranks stopped importing trackers they do not "
    "use and DeepSpeed's Muon module), and the tiny and 78M tables were measured again; the Qwen2-0.5B table "
    "is the older run.",
    "- Not covered here: GPU memory (no GPU was lent to this task; on a GPU the CUDA caching allocator replaces "
    "glibc's arenas and the fixed overhead is 1 GiB, also unmeasured), bf16, and sequences beyond a few thousand "
    "tokens (attention's cost grows with the square of the length on this shared CPU).",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    parser.add_argument("--models", default="tiny,qwen2-78m", help="comma list of " + ", ".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    parser.add_argument("--variants", default="zero", help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--cutoff-len", type=int, default=CUTOFF_LEN, help="data.cutoff_len of every run")
    parser.add_argument("--tight-malloc", action="store_true", help="run the ranks with " + " ".join(TIGHT_MALLOC))
    parser.add_argument("--sample-ms", type=int, default=SAMPLE_MS, help="how often the ranks' RssAnon is read")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument(
        "--rerender",
        type=Path,
        nargs="+",
        default=None,
        help="measurements of earlier --json runs: render them together, run nothing",
    )
    args = parser.parse_args()
    out_file = args.out.resolve()
    os.chdir(ROOT)
    from launcher.model.builtin import materialize

    materialize("builtin:tiny-qwen2")
    with tempfile.TemporaryDirectory(prefix="launcher-bench-methods-") as tmp:
        work = Path(tmp)
        recipe_file = bench_recipe(work)
        if args.rerender:
            runs = [json.loads(path.read_text()) for path in args.rerender]
        else:
            env = {**base_env(), **(TIGHT_MALLOC if args.tight_malloc else {})}
            rows: dict[str, list[dict]] = {}
            for name in args.models.split(","):
                rows[name] = []
                for method in args.methods.split(","):
                    for variant in (v for group in args.variants.split(",") for v in VARIANTS[group]):
                        if not allowed(recipe_file, method, variant):
                            continue
                        row = run_one(
                            recipe_file,
                            model_path(name),
                            method,
                            variant,
                            args.cutoff_len,
                            args.steps,
                            work,
                            env,
                            args.sample_ms,
                        )
                        print(
                            f"[bench] {name} {method} {variant} cutoff {args.cutoff_len}: rank0 {row['rank0_gb']:.3f} "
                            f"rank1 {row['rank1_gb']:.3f} GiB, {row['step_s']:.2f} s/step",
                            flush=True,
                        )
                        rows[name].append(row)
            malloc = "tight" if args.tight_malloc else "glibc default"
            runs = [
                {
                    "steps": args.steps,
                    "malloc": malloc,
                    "sample_ms": args.sample_ms,
                    "variants": args.variants,
                    "versions": versions(),
                    "rows": rows,
                }
            ]
            if args.json:
                args.json.write_text(json.dumps(runs[0], indent=1))
        write_section(out_file, render(runs, recipe_file), SECTION)
    print(f"[bench] wrote {SECTION!r} to {out_file}")


if __name__ == "__main__":
    main()
