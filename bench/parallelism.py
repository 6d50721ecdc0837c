"""FSDP2 vs DeepSpeed ZeRO-3 on the tiny recipe (issue 25): steps per second and the peak anonymous RSS of
each rank, both engines run alternately in this one invocation (order swapped every repetition), so their
ratios share the machine's load. LoRA, 2 CPU processes over gloo, fp32, the recipe's batch. Writes the
section "## Parallelism: FSDP2 vs ZeRO-3" of docs/benchmarks.md (other sections are kept).

--sp: Ulysses sequence parallelism's memory instead. The tiny model, LoRA, ZeRO-3, 2 ranks, through
bench/methods.py's runs (rank RssAnon sampled, tight malloc), the demo data read --copies times so that every
micro batch holds full greedy-packed rows of cutoff_len tokens: sp=1 and sp=2 at cutoff_len L and 2L. Reports the peak per rank of sp=2 against sp=1 at 2L (target <= 0.6x),
the per-token growth from L to 2L of each, and the longest cutoff_len each fits in a fixed per-rank budget:
the planner's (bisected over its estimate) and the measured (the line through the two measured peaks),
with a run at the planner's longest to check it fits. Writes "## Parallelism: sequence parallelism memory".

    python bench/parallelism.py [--steps 8] [--repeats 2] [--out docs/benchmarks.md]
    python bench/parallelism.py --sp [--steps 1] [--length 15360] [--copies 5] [--budget-gib 0.75]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the repo's `launcher` and `bench` without installing them

from bench import methods  # noqa: E402
from bench.methods import TIGHT_MALLOC, launch_with_peaks  # noqa: E402
from bench.overhead import base_env, free_port, machine, versions, wait_for_quiet, write_section  # noqa: E402
from launcher.plan.memory import GIB  # noqa: E402

SECTION = "## Parallelism: FSDP2 vs ZeRO-3"
TINY = ROOT / "recipes" / "sft_tiny.yaml"
ENGINES = {"FSDP2": ["distributed.engine=fsdp"], "ZeRO-3": ["distributed.engine=deepspeed", "distributed.zero=3"]}


def run_one(name: str, steps: int, work: Path, env: dict[str, str]) -> dict:
    """One `launch` run of the tiny recipe under an engine: steps/s (the Trainer's train_runtime) and peaks."""
    out = work / name
    overrides = [
        *ENGINES[name],
        f"train.max_steps={steps}",
        f"train.save_steps={steps + 1}",
        f"output.dir={out}",
        "output.overwrite=true",
        f"distributed.master_port={free_port()}",
    ]
    wait_for_quiet()
    code, peaks, _ = launch_with_peaks(TINY, overrides, work / f"{name}.log", env)
    if code != 0:
        sys.exit(f"[bench] {name} failed with exit code {code}; log: {work / f'{name}.log'}")
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = next(e["train_runtime"] for e in reversed(state["log_history"]) if "train_runtime" in e)
    return {
        "steps_per_s": state["global_step"] / runtime,
        "rank_gb": [peaks.get(rank, 0) / GIB for rank in (0, 1)],
    }


def render(runs: dict[str, list[dict]], steps: int) -> str:
    def median(name: str, pick) -> float:
        return statistics.median(pick(run) for run in runs[name])

    lines = [
        SECTION,
        "",
        f"bench/parallelism.py, {datetime.now(timezone.utc):%Y-%m-%d}: recipes/sft_tiny.yaml (LoRA, fp32), "
        f"{steps} optimizer steps, 2 CPU processes over gloo, {len(runs['FSDP2'])} runs per engine alternating; "
        f"ranks with {' '.join(f'{k}={v}' for k, v in TIGHT_MALLOC.items())} so RssAnon follows the live tensors. {machine()}; {versions()}. "
        "Medians; the ratio is FSDP2 / ZeRO-3 in this same invocation.",
        "",
        "| engine | steps/s | peak RssAnon rank 0 (GiB) | rank 1 (GiB) |",
        "|---|---|---|---|",
    ]
    for name in ENGINES:
        lines.append(
            f"| {name} | {median(name, lambda r: r['steps_per_s']):.3f} | "
            f"{median(name, lambda r: r['rank_gb'][0]):.3f} | {median(name, lambda r: r['rank_gb'][1]):.3f} |"
        )
    ratio = {
        label: median("FSDP2", pick) / median("ZeRO-3", pick)
        for label, pick in (
            ("steps/s", lambda r: r["steps_per_s"]),
            ("rank 0 peak", lambda r: r["rank_gb"][0]),
            ("rank 1 peak", lambda r: r["rank_gb"][1]),
        )
    }
    lines += [
        f"| FSDP2 / ZeRO-3 | {ratio['steps/s']:.2f}x | {ratio['rank 0 peak']:.2f}x | {ratio['rank 1 peak']:.2f}x |",
        "",
        "On a model this small both engines' step is dominated by gloo's collectives and Python; GPU numbers "
        "(bench/gpu_check.py) are pending a GPU.",
        "",
    ]
    return "\n".join(lines)


SP_SECTION = "## Parallelism: sequence parallelism memory"
SP_TARGET = 0.6
TINY_MODEL = "builtin:tiny-qwen2"
MICRO_BATCH = 2  # bench/methods.py's train.micro_batch_size


def sp_variant(sp: int) -> dict:
    # long: the tiny model's context is 2,048 tokens; longer rows take linear RoPE scaling (memory is the same)
    return {"engine": "deepspeed", "zero": 3, "offload": "none", "sp": sp, "long": True}


def sp_run(recipe_file: Path, sp: int, cutoff_len: int, steps: int, work: Path, env: dict[str, str]) -> dict:
    """bench/methods.py's run of the tiny model, LoRA, ZeRO-3 at this degree and length; rank peaks in GiB."""
    wait_for_quiet()
    row = methods.run_one(recipe_file, TINY_MODEL, "lora", sp_variant(sp), cutoff_len, steps, work, env)
    row["peak_gb"] = max(row["rank0_gb"], row["rank1_gb"])
    print(
        f"[bench] sp {sp} cutoff_len {cutoff_len}: peaks {row['rank0_gb']:.3f} / {row['rank1_gb']:.3f} GiB", flush=True
    )
    return row


def estimate_gb(recipe_file: Path, sp: int, cutoff_len: int) -> float:
    """The planner's total for the bench's micro batches (MICRO_BATCH rows)."""
    return methods.estimate_for(recipe_file, TINY_MODEL, "lora", sp_variant(sp), cutoff_len)["estimate_gb"]


def planner_longest(recipe_file: Path, sp: int, budget_gb: float, step: int = 256) -> int:
    """The longest cutoff_len (a multiple of `step`) whose estimate fits the budget: the estimate grows with the
    length, so bisect over the multiples."""
    low, high = 0, 1
    while estimate_gb(recipe_file, sp, high * step) <= budget_gb:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if estimate_gb(recipe_file, sp, middle * step) <= budget_gb else (low, middle)
    return low * step


def planner_target_length(recipe_file: Path, step: int = 256, longest: int = 1 << 20) -> int | None:
    """The shortest cutoff_len (a multiple of `step`) at which the planner's sp 2 / sp 1 ratio is within SP_TARGET:
    the ratio falls with the length (the fixed runtime and model states weigh less), so bisect."""

    def within(cutoff_len: int) -> bool:
        return estimate_gb(recipe_file, 2, cutoff_len) / estimate_gb(recipe_file, 1, cutoff_len) <= SP_TARGET

    if not within(longest):
        return None
    low, high = 0, longest // step
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if within(middle * step) else (middle, high)
    return high * step


def planned_ratio(recipe_file: Path, cutoff_len: int) -> float:
    return estimate_gb(recipe_file, 2, cutoff_len) / estimate_gb(recipe_file, 1, cutoff_len)


def measured_longest(runs: list[dict], budget_gb: float) -> int:
    """Where the least-squares line through the measured (tokens per micro batch, peak) points reaches the budget,
    as the cutoff_len of a full micro batch."""
    tokens = [MICRO_BATCH * r["cutoff_len"] for r in runs]
    slope, intercept = statistics.linear_regression(tokens, [r["peak_gb"] for r in runs])
    return int((budget_gb - intercept) / slope / MICRO_BATCH)


def full_rows_recipe(work: Path, copies: int) -> Path:
    """bench/methods.py's recipe with the demo data read `copies` times: at 10-30k tokens the demo data alone packs
    into one or two rows shorter than cutoff_len, which accelerate's even batches then repeat to fill a micro
    batch; read several times, every row is full."""
    recipe_file = methods.bench_recipe(work)
    raw = yaml.safe_load(recipe_file.read_text())
    raw["data"]["datasets"] = raw["data"]["datasets"] * copies
    recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return recipe_file


def bench_sp(length: int, budget_gb: float, steps: int, copies: int, work: Path) -> dict:
    """The runs at L and 2L for sp 1 and 2, then one run at each degree's planner longest length."""
    env = {**base_env(), **TIGHT_MALLOC}
    recipe_file = full_rows_recipe(work, copies)
    runs = {
        (sp, cutoff): sp_run(recipe_file, sp, cutoff, steps, work, env)
        for cutoff in (length, 2 * length)
        for sp in (1, 2)
    }
    longest = {}
    for sp in (1, 2):
        planned = planner_longest(recipe_file, sp, budget_gb)
        longest[sp] = {"planner": planned, "check": sp_run(recipe_file, sp, planned, steps, work, env)}
    return {
        "length": length,
        "budget_gb": budget_gb,
        "steps": steps,
        "copies": copies,
        "runs": list(runs.values()),
        "longest": longest,
    }


def render_sp(result: dict, recipe_file: Path) -> str:
    length, budget, steps, copies = result["length"], result["budget_gb"], result["steps"], result["copies"]
    runs = {(r["sp"], r["cutoff_len"]): r for r in result["runs"]}
    lines = [
        SP_SECTION,
        "",
        f"`python bench/parallelism.py --sp --steps {steps} --length {length} --copies {copies} --budget-gib {budget}`, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}: builtin:tiny-qwen2 (4 layers, width 128, 4 heads / 2 KV, vocab "
        "2048), LoRA (rank 8, all linears), fp32, DeepSpeed ZeRO-3, 2 CPU processes over gloo, bench/methods.py's "
        f"runs (demo_sft read {copies} times, greedy-packed into full rows of cutoff_len tokens, micro batch "
        f"{MICRO_BATCH}, gradient checkpointing, the plain loss, {steps} optimizer step(s)), ranks with "
        f"{' '.join(f'{k}={v}' for k, v in TIGHT_MALLOC.items())} so RssAnon follows the live tensors. {machine()}; "
        f"{versions()}. sp 1: each rank trains its own rows (data-parallel 2); sp 2: both ranks split every row "
        "(data-parallel 1). Peak = the higher of the two ranks' peak RssAnon; estimate = `launch plan`'s total "
        "for ZeRO-3 at that degree and length.",
        "",
        "| cutoff_len | sp | peak rank 0 / rank 1 (GiB) | estimate (GiB) | error |",
        "|---|---|---|---|---|",
    ]
    for (sp, cutoff), r in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        est = estimate_gb(recipe_file, sp, cutoff)
        lines.append(
            f"| {cutoff} | {sp} | {r['rank0_gb']:.3f} / {r['rank1_gb']:.3f} | {est:.3f} | {est / r['peak_gb'] - 1:+.1%} |"
        )
    ratio = runs[2, 2 * length]["peak_gb"] / runs[1, 2 * length]["peak_gb"]
    growth = {sp: (runs[sp, 2 * length]["peak_gb"] - runs[sp, length]["peak_gb"]) * 1024 for sp in (1, 2)}
    lines += [
        "",
        f"- **sp 2 / sp 1 at cutoff_len {2 * length}: {ratio:.2f}x** peak per rank (target <= {SP_TARGET}x: "
        f"{'met' if ratio <= SP_TARGET else 'missed'}; the planner: {planned_ratio(recipe_file, 2 * length):.2f}x). "
        f"Going from {length} to {2 * length} tokens adds {growth[1]:.0f} MiB per rank at sp 1 and {growth[2]:.0f} "
        f"MiB at sp 2 ({growth[2] / growth[1]:.2f}x): the memory that grows with the sequence is split, while what "
        "does not grow with it (the runtime, the ZeRO-3 model states) is not split by sequence parallelism. On this "
        f"model the planner's ratio reaches {SP_TARGET}x at cutoff_len {planner_target_length(recipe_file)}.",
        "",
        f"Longest cutoff_len within {budget} GiB per rank (the planner's: bisected over its estimate in steps of 256; "
        "check: a run at the planner's longest; measured: where the least-squares line through that degree's "
        "three measured peaks reaches the budget):",
        "",
        "| sp | planner's longest | measured longest | check run at the planner's: peak rank 0 / rank 1 (GiB) | fits |",
        "|---|---|---|---|---|",
    ]
    for sp, found in result["longest"].items():
        check = found["check"]
        measured = measured_longest([r for r in result["runs"] if r["sp"] == int(sp)] + [check], budget)
        lines.append(
            f"| {sp} | {found['planner']} | {measured} | {check['rank0_gb']:.3f} / {check['rank1_gb']:.3f} | "
            f"{'yes' if check['peak_gb'] <= budget else 'no'} |"
        )
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    parser.add_argument("--sp", action="store_true", help="sequence parallelism's memory (section: " + SP_SECTION + ")")
    parser.add_argument("--length", type=int, default=15360, help="--sp: cutoff_len L (runs at L and 2L)")
    parser.add_argument("--copies", type=int, default=5, help="--sp: times the demo data is read (full rows)")
    parser.add_argument("--budget-gib", type=float, default=0.75, help="--sp: the per-rank memory budget")
    parser.add_argument("--json", type=Path, default=None, help="--sp: also write the measurements here")
    parser.add_argument("--rerender", type=Path, default=None, help="--sp: render these measurements, run nothing")
    args = parser.parse_args()
    out_file = args.out.resolve()
    os.chdir(ROOT)
    if args.sp:
        with tempfile.TemporaryDirectory(prefix="launcher-bench-sp-") as tmp:
            if args.rerender:
                result = json.loads(args.rerender.read_text())
            else:
                result = bench_sp(args.length, args.budget_gib, args.steps, args.copies, Path(tmp))
                if args.json:
                    args.json.write_text(json.dumps(result, indent=1))
            recipe_file = full_rows_recipe(Path(tmp), result["copies"])
            write_section(out_file, render_sp(result, recipe_file), SP_SECTION)
        print(f"[bench] wrote {SP_SECTION!r} to {out_file}")
        return
    env = {**base_env(), **TIGHT_MALLOC}
    runs: dict[str, list[dict]] = {name: [] for name in ENGINES}
    with tempfile.TemporaryDirectory(prefix="launcher-bench-parallelism-") as tmp:
        for repeat in range(args.repeats):
            order = list(ENGINES) if repeat % 2 == 0 else list(reversed(ENGINES))
            for name in order:
                row = run_one(name, args.steps, Path(tmp), env)
                print(f"[bench] {name}: {row['steps_per_s']:.3f} steps/s, peaks {row['rank_gb']}", flush=True)
                runs[name].append(row)
    write_section(out_file, render(runs, args.steps), SECTION)
    print(f"[bench] wrote {SECTION!r} to {out_file}")


if __name__ == "__main__":
    main()
