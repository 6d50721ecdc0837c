"""FSDP2 vs DeepSpeed ZeRO-3 on the tiny recipe (issue 25): steps per second and the peak anonymous RSS of
each rank, both engines run alternately in this one invocation (order swapped every repetition), so their
ratios share the machine's load. LoRA, 2 CPU processes over gloo, fp32, the recipe's batch. Writes the
section "## Parallelism: FSDP2 vs ZeRO-3" of docs/benchmarks.md (other sections are kept).

    python bench/parallelism.py [--steps 8] [--repeats 2] [--out docs/benchmarks.md]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the repo's `launcher` and `bench` without installing them

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
    code, peaks = launch_with_peaks(TINY, overrides, work / f"{name}.log", env)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    args = parser.parse_args()
    out_file = args.out.resolve()
    os.chdir(ROOT)
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
