"""Start-up: seconds from the command's start to the first optimizer step, `launch` vs plain torchrun + Trainer,
beside the floor both stand on: torchrun starting ranks that only import the libraries (bench/import_floor.py).

Both run the tiny recipe as bench/overhead.py does (same model, data, LoRA, ZeRO-3 config, 2 CPU
processes), alternating, order swapped every repetition. The clock is this script's: each line
the command prints is stamped as it arrives (the ranks run with PYTHONUNBUFFERED=1), and the first
step is the line rank 0 prints for step 1 (`[train] step 1/N` from launch, the Trainer's
`{'loss': ...}` from the plain script; both log after step 1's optimizer step, logging_first_step).
For launch the lines before it show where its start-up goes. Writes the section "## Start-up" of
docs/benchmarks.md (other sections are kept).

    python bench/startup.py [--steps 5] [--repeats 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: make the repo's `launcher` and `bench` importable

from bench.overhead import (  # noqa: E402
    PAIR_OVERRIDES,
    QUIET,
    cpu_seconds,
    free_port,
    launch_argv,
    machine,
    plain_argv,
    prepare_pair,
    training_bench_args,
    versions,
    wait_for_quiet,
    write_section,
)

SECTION = "## Start-up"
FLOOR = str(ROOT / "bench" / "import_floor.py")
TARGET_S = 3.0  # issue 28 point 10: the first step within 3 s of `launch` on the tiny recipe
# launch's own lines, in the order a run prints them: where its start-up time goes
LAUNCH_MARKS = (
    ("plan written", re.compile(r"^\[launch\] node 0 of")),
    ("model + method ready", re.compile(r"^\[launcher\] trainable params")),
    ("data + trainer ready", re.compile(r"^\[launcher\] data:")),
    ("train begins", re.compile(r"^\[launcher\] MFU:")),
    ("first step", re.compile(r"^\[train\] step 1/")),
)
NOTE = (
    "`model + method ready` holds each rank's imports of torch, transformers (which brings peft and accelerate) and "
    "DeepSpeed, the process group and the model load: the same libraries the plain script imports (it also "
    "imports datasets and bitsandbytes, which the launcher's ranks skip: worker/lean_imports.py). `train begins` "
    "is the Trainer's DeepSpeed engine set-up. The CPU matmul peak for MFU is measured on a machine's first run "
    "only and read from the cache afterwards (monitoring/cpu_peak.py), so no timed run here measured it."
)
PLAIN_MARKS = (("first step", re.compile(r"""^\{['"]loss['"]:""")),)
# the floor: torchrun starting 2 ranks that import the libraries and exit (bench/import_floor.py); its "first step"
# is rank 0's line once they are imported, before any model, data or process group
FLOOR_MARKS = (("first step", re.compile(r"^\[floor\] imported")),)
KINDS = ("launch", "plain", "floor")


@dataclass
class Start:
    kind: str  # "launch", "plain" or "floor"
    marks: dict[str, float] = field(default_factory=dict)  # mark -> seconds since the command started
    wall_s: float = 0.0
    other_cpu: float = 0.0  # share of the machine's CPU other processes took meanwhile

    @property
    def first_step_s(self) -> float:
        return self.marks["first step"]


def stamped_run(kind: str, argv: list[str], env: dict[str, str], log: Path) -> Start:
    """Run argv, stamping each output line as it arrives; the first time each mark's line appears."""
    wait_for_quiet()
    marks = {"launch": LAUNCH_MARKS, "plain": PLAIN_MARKS, "floor": FLOOR_MARKS}[kind]
    run = Start(kind)
    before = cpu_seconds()
    start = time.perf_counter()
    with (
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
        log.open("w") as sink,
    ):
        for line in proc.stdout:
            now = time.perf_counter() - start
            sink.write(f"{now:8.3f} {line}")
            for name, pattern in marks:
                if name not in run.marks and pattern.match(line):
                    run.marks[name] = now
    run.wall_s = time.perf_counter() - start
    after = cpu_seconds()
    other = max(0.0, (after[0] - before[0]) - (after[1] - before[1]))
    run.other_cpu = other / (run.wall_s * len(os.sched_getaffinity(0)))
    missing = [name for name, _ in marks if name not in run.marks]
    if proc.returncode != 0 or missing:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        sys.exit(f"[bench] {kind}: exit code {proc.returncode}, lines not seen: {missing or 'none'}\n{tail}")
    print(
        f"[bench] {kind}: first step at {run.first_step_s:.2f} s, exit at {run.wall_s:.1f} s, "
        f"other processes' CPU {100 * run.other_cpu:.0f}%",
        flush=True,
    )
    return run


def bench(steps: int, repeats: int, work: Path) -> tuple[list[Start], list[str]]:
    """Alternate launch, plain and floor runs (order reversed each repetition), after one untimed warm-up of each."""
    overrides = [f"train.max_steps={steps}", "train.save_steps=100000", "train.logging_steps=1", *PAIR_OVERRIDES]
    plan, model_dir, ds_config, env, plain_env = prepare_pair(overrides, work)

    def command(kind: str, out: Path) -> tuple[list[str], dict[str, str]]:
        if kind == "launch":
            return launch_argv(overrides, out, free_port()), env
        if kind == "floor":
            nproc = f"--nproc-per-node={plan['world']['nproc_per_node']}"
            return [sys.executable, "-m", "torch.distributed.run", nproc, f"--master-port={free_port()}", FLOOR], env
        return plain_argv(plan, model_dir, ds_config, out, free_port()), plain_env

    for kind in KINDS:  # page cache, DeepSpeed's op cache, the CPU peak cache: what a second run finds
        print(f"[bench] warm-up {kind} (untimed)", flush=True)
        stamped_run(kind, *command(kind, work / f"warm-{kind}"), work / f"warm-{kind}.log")
    runs = []
    for rep in range(repeats):
        for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:
            runs.append(stamped_run(kind, *command(kind, work / f"{kind}-{rep}"), work / f"{kind}-{rep}.log"))
    return runs, overrides


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def render(runs: list[Start], overrides: list[str], steps: int, repeats: int, load: tuple[str, str]) -> str:
    first = {k: [r.first_step_s for r in runs if r.kind == k] for k in KINDS}
    med = {k: statistics.median(v) for k, v in first.items()}
    ratio = med["launch"] / med["plain"]
    launch_runs = [r for r in runs if r.kind == "launch"]
    phases = []
    previous = 0.0
    for name, _ in LAUNCH_MARKS:
        at = statistics.median(r.marks[name] for r in launch_runs)
        phases.append(f"| {name} | {at:.2f} | +{at - previous:.2f} |")
        previous = at
    disturbed = [str(i + 1) for i, r in enumerate(runs) if r.other_cpu > QUIET]
    rows = [
        f"| {i + 1} | {r.kind} | {r.first_step_s:.2f} | {r.wall_s:.1f} | {100 * r.other_cpu:.0f}% |"
        for i, r in enumerate(runs)
    ]
    verdict = "**meets**" if med["launch"] <= TARGET_S else "**misses**"
    return "\n".join(
        [
            SECTION,
            "",
            f"Generated by `python bench/startup.py --steps {steps} --repeats {repeats}` on "
            f"{datetime.now(timezone.utc).date().isoformat()} (UTC).",
            "",
            f"- Machine: 2-core CPU, no GPU ({machine()}).",
            f"- Versions: {versions()}.",
            f"- Load: the 1/5/15-minute load averages were {load[0]} at the start and {load[1]} at the end; the "
            "machine is shared with other engineers' test runs, so each run first waits up to 60 s for other "
            f"processes to go below {QUIET:.0%} of the CPU, and `other CPU` says how much they took meanwhile"
            + (f" (runs {', '.join(disturbed)} above {QUIET:.0%}: disturbed)." if disturbed else "."),
            f"- Target: the first optimizer step within {TARGET_S:.0f} s of `launch` on the tiny recipe.",
            "",
            f"`launch recipes/sft_tiny.yaml {' '.join(overrides)}` against `torchrun bench/plain_trainer.py` with "
            "the same model, data, LoRA and ZeRO-3 config (bench/overhead.py's pair of commands), both on 2 CPU "
            "processes over gloo, after one untimed warm-up run of each. first step = seconds from the command's "
            "start to rank 0's log line of step 1, stamped by the benchmark as the line arrives.",
            "",
            "| # | run | first step s | exit s | other CPU |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "| median | launch | plain | launch / plain | floor (imports only) |",
            "|---|---|---|---|---|",
            f"| first step s | {med['launch']:.2f} | {med['plain']:.2f} | **{ratio:.2f}** | {med['floor']:.2f} |",
            "",
            f"floor = `torchrun` starting the same 2 ranks, each importing torch, transformers' Trainer and model class, "
            f"peft and DeepSpeed, then exiting (bench/import_floor.py): no launcher, model, data or step. "
            f"{'No' if med['floor'] > TARGET_S else 'A'} torchrun-launched trainer of this stack can take its first "
            f"step within {TARGET_S:.0f} s on this machine{' (the floor alone is above it)' if med['floor'] > TARGET_S else ''}; "
            f"the launcher's first step comes {med['launch'] - med['floor']:.2f} s after the floor "
            f"(the plain script's {med['plain'] - med['floor']:.2f} s).",
            "",
            f"The launcher {verdict} the {TARGET_S:.0f} s target ({med['launch']:.2f} s, median of {len(launch_runs)}). "
            "Where its start-up goes (median seconds since `launch` started, from its own output lines):",
            "",
            "| line seen | at s | since the previous |",
            "|---|---|---|",
            *phases,
            "",
            NOTE,
            "",
        ]
    )


def main() -> None:
    args = training_bench_args(__doc__, steps=5, repeats=3)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="launcher-startup-") as tmp:
        runs, overrides = bench(args.steps, args.repeats, Path(tmp))
    section = render(runs, overrides, args.steps, args.repeats, (load_before, load_average()))
    write_section(args.out, section, SECTION)
    print(section)
    print(f"[bench] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
