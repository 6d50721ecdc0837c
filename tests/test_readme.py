"""The README's example commands hold as written, checked cheaply (no training: runs are tested elsewhere).

Every command line of its bash blocks: `make T` is a Makefile target; `launch VERB` is a real verb and
every flag it uses is in `launch VERB --help`; every recipe, hostfile or config file it names exists, every
`--dataset` is registered, every `outputs/...` folder is the output.dir of a run the README starts, and a
`checkpoint-N` in one is a checkpoint that run writes (N a multiple of its train.save_steps, within its
steps on the default 2 CPU processes). The torch-free ones run and exit 0: a run's own `launch plan`
(recipe and overrides valid), plan, schema, sbatch (script written, not submitted), import-lf."""

from __future__ import annotations

import functools
import json
import math
import re
import shlex

import pytest

from tests.conftest import ROOT, run_launch

BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
FILE_SUFFIXES = (".yaml", ".yml", ".txt", ".json")
OUTPUT_FLAGS = ("--out", "--script")  # what a command writes: need not exist
CPU_PROCESSES = 2  # nproc_per_node: auto without a GPU


def readme_lines() -> list[list[str]]:
    lines = [line for block in BLOCK.findall((ROOT / "README.md").read_text()) for line in block.splitlines()]
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def launch_commands() -> list[tuple[str, list[str], str | None]]:
    """(verb, argv after the verb, stdout redirect target) of each `launch` line."""
    from launcher.cli import COMMANDS

    out = []
    for words in readme_lines():
        if words[0] != "launch":
            continue
        argv, redirect = words[1:], None
        if ">" in argv:
            argv, redirect = argv[: argv.index(">")], argv[argv.index(">") + 1]
        verb = argv[0] if argv[0] in COMMANDS else "train"
        out.append((verb, argv[1:] if verb == argv[0] else argv, redirect))
    return out


COMMANDS = launch_commands()
IDS = [f"{verb}-{i}" for i, (verb, _, _) in enumerate(COMMANDS)]


@functools.cache
def help_flags(verb: str) -> set[str]:
    proc = run_launch([verb, "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"--[a-z][\w-]*", proc.stdout))


def split_args(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(positional words, {flag: [values]}); a flag followed by a non-flag word takes it as its value."""
    positional, flags, index = [], {}, 0
    while index < len(argv):
        word = argv[index]
        if word.startswith("--"):
            value = argv[index + 1] if index + 1 < len(argv) and not argv[index + 1].startswith("-") else None
            flags.setdefault(word, []).append(value)
            index += 2 if value is not None else 1
        else:
            positional.append(word)
            index += 1
    return positional, flags


def trained_runs() -> dict[str, dict]:
    """output.dir -> the resolved recipe of each run the README starts (`launch RECIPE ...`)."""
    from launcher.recipe.load import load_recipe

    runs = {}
    for verb, argv, _ in COMMANDS:
        if verb == "train":
            positional, _ = split_args(argv)
            recipe = load_recipe(str(ROOT / positional[0]), positional[1:])
            runs.setdefault(recipe["output"]["dir"], recipe)
    return runs


def cpu_steps(recipe: dict) -> int:
    """The optimizer steps of a run on 2 CPU processes, at least (the Trainer's count, remainders rounded down)."""
    train, data = recipe["train"], recipe["data"]
    if train["max_steps"]:
        return train["max_steps"]
    info = json.loads((ROOT / data["dataset_dir"] / "dataset_info.json").read_text())
    rows = sum(
        len(json.loads((ROOT / data["dataset_dir"] / info[name]["file_name"]).read_text())) for name in data["datasets"]
    )
    rows = min(rows, data["max_samples"] or rows)
    batches = math.ceil(math.ceil(rows / CPU_PROCESSES) / train["micro_batch_size"])
    return int(train["epochs"] * (batches // train["grad_accum"]))


def check_paths(argv: list[str], flags: dict[str, list[str]]) -> None:
    outputs = {value for flag in OUTPUT_FLAGS for value in flags.get(flag, [])}
    words = [w.split("=", 1)[1] if "=" in w else w for w in argv if w not in outputs]
    for word in words:
        if word.startswith("outputs/"):
            run = next((dir for dir in trained_runs() if word == dir or word.startswith(dir + "/")), None)
            assert run is not None, f"{word}: no README command trains a run into it"
            rest = word[len(run) :].strip("/")
            if rest:
                recipe = trained_runs()[run]
                step = re.fullmatch(r"checkpoint-(\d+)", rest)
                assert step, f"{word}: not a folder a run writes"
                save, steps = recipe["train"]["save_steps"], cpu_steps(recipe)
                assert int(step[1]) % save == 0 and int(step[1]) <= steps, (
                    f"{word}: the run saves every {save} steps and trains {steps}"
                )
        elif word.endswith(FILE_SUFFIXES):
            assert (ROOT / word).is_file(), f"{word} does not exist"
    info = json.loads((ROOT / "data" / "dataset_info.json").read_text())
    for name in flags.get("--dataset", []):
        assert name in info, f"--dataset {name}: not in data/dataset_info.json"


@pytest.mark.unit
def test_make_lines_name_makefile_targets():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    made = [words[1] for words in readme_lines() if words[0] == "make"]
    assert made and set(made) <= targets


@pytest.mark.multiproc
@pytest.mark.parametrize("verb,argv,redirect", COMMANDS, ids=IDS)
def test_readme_command_holds(verb, argv, redirect, tmp_path):
    positional, flags = split_args(argv)
    unknown = set(flags) - help_flags(verb)
    assert not unknown, f"launch {verb}: {sorted(unknown)} not in its --help"
    check_paths(argv, flags)
    if verb in ("train", "plan"):  # the run's own plan: recipe and overrides valid, hosts and nodes consistent
        hosts = [w for flag in ("--include", "--exclude") for v in flags.get(flag, []) for w in (flag, v)]
        proc = run_launch(["plan", *positional, *hosts], timeout=120)
    elif verb == "sbatch":
        proc = run_launch(["sbatch", *positional, "--script", str(tmp_path / "job.sbatch")], timeout=120)
        assert (tmp_path / "job.sbatch").is_file()
    elif verb == "import-lf":
        proc = run_launch(["import-lf", *positional, "--out", str(tmp_path / "recipe.yaml")], timeout=120)
        assert run_launch(["plan", str(tmp_path / "recipe.yaml")], timeout=120).returncode == 0
    elif verb == "schema":
        proc = run_launch(["schema"], timeout=120)
        assert redirect is None or json.loads(proc.stdout)["properties"]
    else:
        return  # chat, consolidate, merge, eval, serve need a trained run: their flags and paths are checked above
    assert proc.returncode == 0, proc.stderr[-3000:]
