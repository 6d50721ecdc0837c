"""GPU throughput: a Qwen2-1.5B-shaped model (built from its config, random init, no hub), full
fine-tuning, bf16, on one GPU, same samples and steps for both runs in one process:

(a) plain HF Trainer: sdpa, the samples of each step as one padded batch, full-logits loss;
(b) the launcher's fastest path: what `launch plan` picks on this machine (model.attn / loss_kernel
    auto, train.compile on): neat packing into one padding-free row of 4,096-token packs, the
    attention kernel's own sample separation, the chunked or liger loss, compiled layers;
(c), (d) the sharding engines, through the real `launch` (one process, the same model saved to disk, the
    kernels `launch plan` picks with train.compile off, the bundled demo_sft data neat-packed into
    4,096-token rows): DeepSpeed ZeRO-3 and FSDP2 (distributed.engine: fsdp), the same code path with only the engine switched; their
    tokens/s, MFU and peak memory are what the run logs (monitoring/throughput.py), medians after the warm-up.
Sequence parallelism needs two GPUs: listed as pending.

Reports tokens/s, MFU (model FLOPs from launcher/monitoring/flops.py over the device's bf16 peak)
and peak memory, and writes the section "## GPU throughput" of docs/benchmarks.md. Targets: MFU
>= 45% for (b) on H100/H200 and >= 1.5x the tokens/s of (a).

    python bench/gpu_throughput.py [--steps 12] [--warmup 4] [--rows 2] [--smoke]

--smoke: the tiny model on CPU for a few steps (shows the script runs; numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from bench.gpu_check import ENGINES, PENDING  # noqa: E402
from bench.methods import bench_recipe  # noqa: E402
from bench.overhead import write_section  # noqa: E402
from launcher.checkpoint.paths import LOG_FILE  # noqa: E402
from launcher.data.collate import PaddingCollator  # noqa: E402
from launcher.data.packing import pack_examples  # noqa: E402
from launcher.data.tokenize import IGNORE_INDEX  # noqa: E402
from launcher.kernels.choice import kernel_plan  # noqa: E402
from launcher.kernels.compile import apply_liger, compile_layers  # noqa: E402
from launcher.kernels.trainer import KernelTrainer  # noqa: E402
from launcher.monitoring.flops import device_peak_flops, model_flops  # noqa: E402
from launcher.recipe.load import resolve  # noqa: E402

SECTION = "## GPU throughput"
ROW = 4096
QWEN2_1P5B = {
    "model_type": "qwen2",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
}
TINY = {
    **QWEN2_1P5B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 2048,
}


def samples(count: int, vocab: int, longest: int, seed: int = 0) -> list[dict]:
    """Long-tailed chat-like lengths, the first half of each sample a masked prompt."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = min(longest, max(8, int(rng.lognormvariate(6.0, 0.9))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]})
    return out


class Clock(TrainerCallback):
    """Tokens and wall time of the steps after the warm-up (compilation, allocator growth), read
    from the collator's own counters (a one-batch look-ahead of the data loader shifts both ends alike)."""

    def __init__(self, collator: PaddingCollator, warmup: int):
        self.collator, self.warmup, self.marks = collator, warmup, []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step >= self.warmup:
            self.marks.append((time.perf_counter(), self.collator.tokens, self.collator.attention_pairs))


def run(
    name: str, config: dict, rows: list[dict], rows_per_step: int, warmup: int, device: str, fastest: bool, out: Path
) -> dict:
    """One run over the same samples: packed rows for (b), the rows' samples padded for (a)."""
    torch.manual_seed(0)
    recipe = resolve(
        {
            "data": {"packing": "neat", "cutoff_len": ROW},
            "train": {
                "compile": fastest,
                "loss_kernel": "auto" if fastest else "plain",
                "gradient_checkpointing": False,
            },
            # a recipe needs a model.path; the kernels follow the config's vocabulary (kernel_plan below)
            "model": {"path": "builtin:tiny-qwen2", "attn": "auto" if fastest else "sdpa"},
        },
        {},
    )
    kernels = kernel_plan(recipe, device == "cuda", config["vocab_size"])
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**config), dtype=torch.bfloat16, attn_implementation=kernels["attn"]
    ).to(device)
    if kernels["loss"] == "liger":
        apply_liger(model)
    if kernels["compile"]:
        compile_layers(model)
    steps = len(rows) // rows_per_step
    if fastest:
        dataset, batch = rows, rows_per_step
        collator = PaddingCollator(0, "neat", kernels["padding_free"])
    else:
        dataset = [
            {"input_ids": r["input_ids"][a:b], "labels": r["labels"][a:b]}
            for r in rows
            for a, b in _spans(r["position_ids"])
        ]
        batch = max(1, round(len(dataset) / steps))
        collator = PaddingCollator(0)
    clock = Clock(collator, warmup)
    args = TrainingArguments(
        output_dir=str(out / name),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-5,
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        report_to=[],
        logging_steps=10**6,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    common = dict(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock])
    trainer = KernelTrainer(**common, kernels=kernels, max_tokens=batch * ROW) if fastest else Trainer(**common)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, tokens0, pairs0), (t1, tokens1, pairs1) = clock.marks[0], clock.marks[-1]
    tokens, seconds = tokens1 - tokens0, t1 - t0
    peak, source = device_peak_flops(torch.device(device), torch.bfloat16)
    flops = model_flops(model).flops(tokens, pairs1 - pairs0)
    result = {
        "name": name,
        "attn": kernels["attn"],
        "loss": kernels["loss"],
        "compile": kernels["compile"],
        "tokens_s": tokens / seconds,
        "mfu": flops / seconds / peak if peak else None,
        "peak_source": source,
        "padding": 1 - collator.tokens / collator.slots,
        "memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    del trainer, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def save_model(config: dict, folder: Path) -> Path:
    """The shape `config`, random init, saved with the builtin tokenizer (ids fit any of our vocabularies)."""
    from launcher.model.builtin import materialize

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tiny = Path(materialize("builtin:tiny-qwen2"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (tiny / name).is_file():
            shutil.copy2(tiny / name, folder / name)
    return folder


def launch_run(name: str, model_dir: Path, args, device: str, out: Path) -> dict:
    """One `launch` of recipes/sft_tiny.yaml (its method keys removed: bench/methods.py's) as a full fine-tuning of `model_dir` under an engine: the medians of
    what the run logs per step after the warm-up, or the failure."""
    run_dir = out / name.split()[0].strip("()")
    overrides = [
        f"model.path={model_dir}",
        f"model.dtype={'bf16' if device == 'cuda' else 'fp32'}",
        "method.name=full",
        "data.packing=neat",
        f"data.cutoff_len={ROW if device == 'cuda' else 256}",
        f"train.micro_batch_size={args.rows}",
        "train.grad_accum=1",
        f"train.max_steps={args.steps}",
        "train.logging_steps=1",
        f"train.save_steps={args.steps + 1}",
        "train.compile=false",  # the engines compared, not compilation (and its minute per run in the budget)
        "train.gradient_checkpointing=true",
        "distributed.nproc_per_node=1",
        "output.report_to=[none]",
        f"output.dir={run_dir}",
        "output.overwrite=true",
        *ENGINES[name],
    ]
    log = out / f"{run_dir.name}.log"
    with log.open("w") as sink:
        code = subprocess.call(
            [sys.executable, "-m", "launcher.cli", str(bench_recipe(out)), *overrides],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        return {"name": name, "failed": f"exit code {code}"}
    plan = json.loads((run_dir / "plan.json").read_text())
    history = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines() if line.strip()]
    steps = [e for e in history if "tokens_per_second" in e and e["step"] > args.warmup] or [
        e for e in history if "tokens_per_second" in e
    ]
    mfu = [e["mfu"] for e in steps if "mfu" in e]
    return {
        "name": name,
        "attn": plan["kernels"]["attn"],
        "loss": plan["kernels"]["loss"],
        "compile": plan["kernels"]["compile"],
        "tokens_s": statistics.median(e["tokens_per_second"] for e in steps),
        "mfu": statistics.median(mfu) if mfu else None,
        "padding": 1 - statistics.median(e.get("padding_efficiency", 1.0) for e in steps),
        "memory_gib": statistics.median(e["peak_memory_gib"] for e in steps) if device == "cuda" else None,
    }


def engine_rows(config: dict, args, device: str, out: Path) -> list[dict]:
    model_dir = save_model(config, out / "model")
    return [launch_run(name, model_dir, args, device, out) for name in ENGINES]


def _spans(positions: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:]))


def render(results: list[dict], args, device_name: str) -> str:
    from bench.overhead import versions

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    plain, fast = results[:2]
    lines = [
        SECTION,
        "",
        f"`python bench/gpu_throughput.py` (via `bench/gpu_check.py`; {when}; {device_name}; {versions()}). "
        f"Qwen2-1.5B shape, random init, full fine-tuning, bf16, {args.rows} x {ROW}-token packed rows per step "
        f"(the baseline: the same samples padded), {args.steps} steps, the first {args.warmup} not timed. MFU: "
        f"model FLOPs (launcher/monitoring/flops.py) / {plain['peak_source']}. (c), (d): `launch` of the same "
        f"model saved to disk, one process, under each engine (nothing else differs), the bundled demo_sft data "
        f"neat-packed into {ROW}-token rows, the plan's kernels without compile; tokens/s, MFU and peak memory as the run logs "
        "them, medians of the steps after the warm-up.",
        "",
        "| run | attention | loss | compile | tokens/s | MFU | padding | peak memory (GiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['name']} | failed: {r['failed']} (its log is printed above the section) |||||||")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        memory = f"{r['memory_gib']:.1f}" if r["memory_gib"] is not None else "n/a"
        lines.append(
            f"| {r['name']} | {r['attn']} | {r['loss']} | {r['compile']} | {r['tokens_s']:,.0f} | {mfu} | "
            f"{100 * r['padding']:.0f}% | {memory} |"
        )
    speedup = fast["tokens_s"] / plain["tokens_s"]
    lines += [
        "",
        f"(b) / (a): **{speedup:.2f}x** tokens/s (target >= 1.5x)"
        + (f"; (b) MFU {100 * fast['mfu']:.1f}% (target >= 45% on H100/H200)" if fast["mfu"] else ""),
        "",
    ]
    engines = {r["name"]: r for r in results[2:] if "failed" not in r}
    if len(engines) == 2:
        zero3, fsdp = engines.values()
        lines += [f"(d) / (c): FSDP2 at **{fsdp['tokens_s'] / zero3['tokens_s']:.2f}x** ZeRO-3's tokens/s.", ""]
    lines += [f"Pending: {PENDING}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2, help="packed 4096-token rows per step")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few steps: the script runs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_throughput.py needs a CUDA GPU (or --smoke on CPU)")
    config = TINY if args.smoke else QWEN2_1P5B
    longest = 256 if args.smoke else ROW
    pool = samples(40 * args.steps * args.rows, config["vocab_size"], longest)
    rows = pack_examples(pool, longest).rows[: args.steps * args.rows]
    with tempfile.TemporaryDirectory() as out:
        results = [
            run(name, config, rows, args.rows, args.warmup, device, fastest, Path(out))
            for name, fastest in (("(a) HF Trainer, sdpa, padded", False), ("(b) launcher fastest path", True))
        ]
        results += engine_rows(config, args, device, Path(out))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU smoke run (numbers meaningless)"
    section = render(results, args, name)
    print(section)
    if not args.smoke:
        write_section(Path(args.out), section, SECTION)


if __name__ == "__main__":
    main()
