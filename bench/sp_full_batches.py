"""Sequence parallelism's memory at full micro batches: bench/parallelism.py --sp runs on the demo data, which at
20,480 tokens packs into one row per rank; here the dataset is read `--copies` times so that every rank's micro
batch holds 2 full rows, as a long-context run's would. sp 1 and sp 2 at one cutoff_len, one optimizer step each
(the peak comes in the first: ZeRO-3's optimizer state is built there), the planner's estimate for 2 rows beside
each. Writes the section "## Parallelism: sequence parallelism at full micro batches" of docs/benchmarks.md.

    python bench/sp_full_batches.py [--length 20480] [--copies 5] [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: the repo's `launcher` and `bench` without installing them

from bench import methods  # noqa: E402
from bench.methods import TIGHT_MALLOC  # noqa: E402
from bench.overhead import base_env, machine, versions, write_section  # noqa: E402
from bench.parallelism import SP_TARGET, estimate_gb, sp_run  # noqa: E402

SECTION = "## Parallelism: sequence parallelism at full micro batches"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=20480)
    parser.add_argument("--copies", type=int, default=5, help="times the demo dataset is read")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    env = {**base_env(), **TIGHT_MALLOC}
    with tempfile.TemporaryDirectory(prefix="launcher-bench-sp-full-") as tmp:
        recipe_file = methods.bench_recipe(Path(tmp))
        raw = yaml.safe_load(recipe_file.read_text())
        raw["data"]["datasets"] = raw["data"]["datasets"] * args.copies
        recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        runs = {sp: sp_run(recipe_file, sp, args.length, args.steps, Path(tmp), env) for sp in (1, 2)}
        estimates = {sp: estimate_gb(recipe_file, sp, args.length, runs[sp]["rows"]) for sp in (1, 2)}
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1, default=str)
        )
    ratio = runs[2]["peak_gb"] / runs[1]["peak_gb"]
    rows = [
        f"| {sp} | {runs[sp]['rows']} | {runs[sp]['rank0_gb']:.3f} / {runs[sp]['rank1_gb']:.3f} | {estimates[sp]:.3f} | "
        f"{100 * (estimates[sp] / runs[sp]['peak_gb'] - 1):+.1f}% |"
        for sp in (1, 2)
    ]
    section = "\n".join(
        [
            SECTION,
            "",
            f"`python bench/sp_full_batches.py --length {args.length} --copies {args.copies} --steps {args.steps}`, "
            f"{datetime.now(timezone.utc).date().isoformat()}: the tiny model, LoRA, fp32, DeepSpeed ZeRO-3, 2 CPU "
            f"processes over gloo, demo_sft read {args.copies} times (greedy-packed rows of {args.length} tokens), "
            "micro batch 2, gradient checkpointing, tight malloc (bench/methods.py's runs, RssAnon sampled). "
            f"{machine()}; {versions()}.",
            "",
            "| sp | rows per micro batch | peak rank 0 / rank 1 (GiB) | estimate (GiB) | error |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"**sp 2 / sp 1 at cutoff_len {args.length}: {ratio:.2f}x** peak per rank (target <= {SP_TARGET}x: "
            f"{'met' if ratio <= SP_TARGET else 'missed'}).",
            "",
        ]
    )
    write_section(args.out, section, SECTION)
    print(section)


if __name__ == "__main__":
    main()
