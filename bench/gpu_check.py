"""The GPU check: one command on one H100/H200-class GPU, offline, from wheels prepared beside it.

    python bench/gpu_check.py --prepare     # here, with internet: wheels into bench/wheels/ (make gpu-wheels)
    python bench/gpu_check.py --dry-run     # checks the wheels, prints the plan, runs nothing
    python bench/gpu_check.py               # on the GPU machine: install, pytest -m gpu, throughput

Steps on the GPU machine (the image has torch >= 2.9, transformers, accelerate, peft,
tensorboard): 1. the wheels are installed with --no-deps into a private folder on PYTHONPATH,
so the machine's own torch is never replaced; 2. `pytest -m gpu` (NCCL ZeRO-3 LoRA through the
CLI, packed == unpacked in bf16, chunked/liger == plain, compile); 3. bench/gpu_throughput.py
writes the "## GPU throughput" section of docs/benchmarks.md: the HF Trainer baseline, the launcher's
fastest path, and `launch` under DeepSpeed ZeRO-3 and under FSDP2 on the same shape. Sequence
parallelism needs two GPUs: the plan lists it as pending.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "bench" / "wheels"
SITE = Path("/tmp/launcher-gpu-site")
# what the GPU image lacks, or has too old: the project's own dependencies and theirs (pinned: one version
# each). transformers: the image's 5.17 predates what the code calls (TrainingArguments(activation_checkpointing=),
# pyproject's >= 5.23), so the tested one goes in beside it and shadows it, with the hub client it needs.
PACKAGES = (
    "transformers==5.24.0",
    "huggingface-hub==2.4.0",
    "deepspeed==0.19.8",
    "datasets==5.2.0",
    "trl==1.16.0",
    "bitsandbytes==0.50.2",
    "liger-kernel==0.8.5",
    "hjson==3.1.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "dill==0.4.1",
    "multiprocess==0.70.19",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
IMAGE_PACKAGES = ("torch", "accelerate", "peft", "tensorboard")  # the GPU image's own, used as they are
# (c), (d): `launch` with these engine keys; the rest as (b) (neat packing, auto kernels, compile)
ENGINES = {
    "(c) launch, DeepSpeed ZeRO-3": ["distributed.engine=deepspeed", "distributed.zero=3"],
    "(d) launch, FSDP2": ["distributed.engine=fsdp"],
}
PENDING = "sequence parallelism (distributed.sequence_parallel: 2 under ZeRO-3) needs two GPUs"
# inside the device tool's 10 minutes per command; throughput: two in-process runs and two `launch` runs
BUDGET_S = {"install": 60, "tests": 240, "throughput": 290}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def missing_wheels(folder: Path = WHEELS) -> list[str]:
    """The pinned packages with no wheel of that version in `folder`."""
    present = {(_normal(w.name.split("-")[0]), w.name.split("-")[1]) for w in folder.glob("*.whl")}
    return [spec for spec in PACKAGES if (_normal(spec.split("==")[0]), spec.split("==")[1]) not in present]


def image_mismatches() -> list[str]:
    """The machine's own packages (used as they are: the wheels go in with --no-deps) that are
    missing or outside the project's ranges in pyproject.toml."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {requirement.name: requirement.specifier for requirement in map(Requirement, dependencies)}
    wrong = []
    for name in IMAGE_PACKAGES:
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name} (not installed)")
            continue
        if not ranges[name].contains(have, prereleases=True):
            wrong.append(f"{name} {have} (the project needs {ranges[name]})")
    return wrong


def prepare(folder: Path = WHEELS) -> None:
    """Download (or, for sdist-only deepspeed, build) every pinned wheel for CPython 3.12 x86-64."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    for spec in missing_wheels(folder):
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        got = subprocess.call(
            [
                *pip,
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--implementation",
                "cp",
                *platforms,
                "-d",
                str(folder),
                spec,
            ]
        )
        if got != 0:  # pure-Python sdist (deepspeed): build a py3 wheel here, no ops compiled
            subprocess.check_call(
                [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), spec],
                env={**os.environ, "DS_BUILD_OPS": "0"},
            )


def plan_lines() -> list[str]:
    return [
        f"1. pip install --no-index --no-deps --target {SITE} {WHEELS.relative_to(ROOT)}/*.whl "
        f"(torch left as the machine has it) [{BUDGET_S['install']} s]",
        f"2. PYTHONPATH={SITE}:{ROOT} python -m pytest -m gpu tests [{BUDGET_S['tests']} s]",
        f"3. python bench/gpu_throughput.py: Qwen2-1.5B shape, random init, full FT, bf16, packed 4096-token rows: "
        f"HF Trainer + sdpa + padding vs the launcher's fastest path, and `launch` under "
        f"{' and '.join(name.split(', ')[-1] for name in ENGINES)} -> docs/benchmarks.md [{BUDGET_S['throughput']} s]",
        f"not run here: {PENDING}",
    ]


def step(name: str, argv: list[str], env: dict) -> bool:
    start = time.perf_counter()
    try:
        code = subprocess.call(argv, cwd=ROOT, env=env, timeout=BUDGET_S[name])
    except subprocess.TimeoutExpired:
        code = "timeout"
    print(
        f"[gpu_check] {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return code == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check the wheels and print the plan")
    parser.add_argument("--prepare", action="store_true", help="download/build the wheels (needs internet)")
    parser.add_argument("--wheels", default=str(WHEELS))
    args = parser.parse_args(argv)
    folder = Path(args.wheels)
    if args.prepare:
        prepare(folder)
    missing = missing_wheels(folder)
    if missing:
        print(
            f"[gpu_check] {folder}: no wheel for {', '.join(missing)}. Fix: `make gpu-wheels` "
            "(python bench/gpu_check.py --prepare) on a machine with internet",
            file=sys.stderr,
        )
        return 2
    wrong = image_mismatches()
    if wrong:
        print(
            f"[gpu_check] this machine's {', '.join(wrong)}. Fix: a GPU image with those in range, or add their "
            "wheels to PACKAGES",
            file=sys.stderr,
        )
        return 2
    print(
        f"[gpu_check] {len(PACKAGES)} wheels ready in {folder}; the machine's own: "
        + ", ".join(f"{name} {version(name)}" for name in IMAGE_PACKAGES),
        flush=True,
    )
    print("\n".join(plan_lines()), flush=True)
    if args.dry_run:
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]), "PYTHONUNBUFFERED": "1"}
    wheels = sorted(str(w) for w in folder.glob("*.whl"))
    ok = step(
        "install",
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--target",
            str(SITE),
            *wheels,
        ],
        env,
    )
    ok = ok and step("tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], env)
    ok = step("throughput", [sys.executable, "bench/gpu_throughput.py"], env) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
