"""Recipes that used to run something other than what they say, refused through the real CLI
(issue 14): no model.path, duplicate keys, recursive anchors, absurd sizes, a plan that does not fit."""

from __future__ import annotations

import os
import textwrap

import pytest

from launcher.errors import RecipeError
from launcher.recipe.load import load_recipe
from tests.conftest import run_launch

CPU = {"CUDA_VISIBLE_DEVICES": ""}


def _plan(tmp_path, text: str, *overrides: str, verb: str = "plan"):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(text))
    return recipe, run_launch([verb, str(recipe), *overrides], timeout=120, env=CPU)


@pytest.mark.multiproc
@pytest.mark.parametrize("text", ["", "stage: sft\nmethod:\n  name: full\n"], ids=["empty", "no model section"])
def test_a_recipe_without_model_path_is_refused(tmp_path, text):
    recipe, proc = _plan(tmp_path, text)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "model.path is required" in proc.stderr and str(recipe) in proc.stderr
    assert "Fix: set model.path" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.multiproc
def test_training_an_empty_recipe_starts_nothing(tmp_path):
    """An empty recipe used to become a 3-epoch ZeRO-3 run into outputs/recipe."""
    recipe, proc = _plan(tmp_path, "", verb="train")
    assert proc.returncode == 2 and "model.path is required" in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.multiproc
def test_a_duplicate_key_is_refused_with_both_lines(tmp_path):
    recipe, proc = _plan(
        tmp_path,
        """\
        model:
          path: builtin:tiny-qwen2
        method:
          name: full
          name: lora
        """,
    )
    assert proc.returncode == 2
    assert f"{recipe}:5: method.name is given twice (lines 4 and 5)" in proc.stderr, proc.stderr


@pytest.mark.multiproc
def test_a_duplicate_key_inside_an_override_is_refused(tmp_path):
    _, proc = _plan(tmp_path, "model:\n  path: builtin:tiny-qwen2\n", "method={name: full, name: lora}")
    assert proc.returncode == 2 and "method.name is given twice" in proc.stderr, proc.stderr


@pytest.mark.multiproc
def test_merge_keys_still_work_and_own_keys_win(tmp_path):
    _, proc = _plan(
        tmp_path,
        """\
        model:
          <<: &base {path: builtin:tiny-qwen2, dtype: fp32, attn: eager}
          dtype: bf16
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "  path: builtin:tiny-qwen2\n" in proc.stdout and "  dtype: bf16\n" in proc.stdout
    assert "  attn: eager\n" in proc.stdout


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "text,line",
    [
        ("model: &m\n  path: builtin:tiny-qwen2\n  x: *m\n", 3),
        ("model: &m\n  path: builtin:tiny-qwen2\n  <<: *m\n", 3),
        ("model:\n  path: builtin:tiny-qwen2\ndata:\n  datasets: &d [demo_sft, *d]\n", 4),
    ],
    ids=["alias", "merge", "list"],
)
def test_a_recursive_anchor_is_exit_2_not_a_recursion_error(tmp_path, text, line):
    recipe, proc = _plan(tmp_path, text)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "RecursionError" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"{recipe}:{line}:" in proc.stderr and "recursive YAML anchor" in proc.stderr


TINY = "recipes/sft_tiny.yaml"


def _hosts(tmp_path, text: str):
    path = tmp_path / "hosts.txt"
    path.write_text(text)
    return path


@pytest.mark.unit
def test_ipv6_literals_are_hostfile_hosts(tmp_path):
    hosts = _hosts(tmp_path, "::1 slots=1\nfe80::1%eth0 slots=1\n")
    proc = run_launch(["plan", TINY, f"distributed.hostfile={hosts}", "distributed.nnodes=2"], timeout=120, env=CPU)
    assert proc.returncode == 0, proc.stderr
    assert "node 0 on ::1" in proc.stdout and "--master-addr=::1" in proc.stdout
    assert "node 1 on fe80::1%eth0" in proc.stdout


@pytest.mark.unit
@pytest.mark.parametrize(
    "text", ["Node1 slots=1\nnode1 slots=1\n", "::1 slots=1\n0:0::1 slots=1\n"], ids=["case", "ipv6 spelling"]
)
def test_two_spellings_of_one_host_are_a_duplicate(tmp_path, text):
    hosts = _hosts(tmp_path, text)
    proc = run_launch(["plan", TINY, f"distributed.hostfile={hosts}", "distributed.nnodes=2"], timeout=120, env=CPU)
    assert proc.returncode == 2
    assert f"{hosts}:2: host" in proc.stderr and f"is listed twice (first at {hosts}:1)" in proc.stderr


@pytest.mark.unit
def test_include_compares_host_names_case_insensitively(tmp_path):
    hosts = _hosts(tmp_path, "node1 slots=1\nnode2 slots=1\nnode3 slots=1\n")
    proc = run_launch(
        ["plan", TINY, f"distributed.hostfile={hosts}", "distributed.nnodes=2", "--include", "NODE1,Node3"],
        timeout=120,
        env=CPU,
    )
    assert proc.returncode == 0, proc.stderr
    assert "node 0 on node1" in proc.stdout and "node 1 on node3" in proc.stdout


@pytest.mark.unit
def test_messages_listing_hosts_or_keys_are_capped(tmp_path):
    hosts = _hosts(tmp_path, "".join(f"node{k} slots=1\n" for k in range(500)))
    proc = run_launch(["plan", TINY, f"distributed.hostfile={hosts}", "distributed.nnodes=2"], timeout=120, env=CPU)
    assert proc.returncode == 2 and "selects 500 host(s) (node0, node1" in proc.stderr
    assert "(492 more)" in proc.stderr and "node499" not in proc.stderr and len(proc.stderr) < 600, proc.stderr
    proc = run_launch(["plan", TINY, "train.qqqqqqqqqqqq=1"], timeout=120, env=CPU)
    assert proc.returncode == 2 and "unknown key train.qqqqqqqqqqqq" in proc.stderr and "more)" in proc.stderr
    assert len(proc.stderr) < 400, proc.stderr


QWEN = "recipes/sft_qwen2.yaml"
TIGHT = "distributed.device_memory_gb=8"  # the budget pinned, so the 7B recipe's ZeRO-3 (11.5 GiB) cannot fit anywhere


def _zero3_estimate() -> str:
    """The planner's ZeRO-3 total for the 7B recipe, as its messages print it."""
    from launcher.plan import build_plan

    memory = build_plan(load_recipe(QWEN, [TIGHT]))["memory"]
    option = next(o for o in memory["options"] if (o["zero"], o["offload"]) == (3, "none"))
    assert option["total_gb"] > 8
    return f"{option['total_gb']:.1f} GiB"


@pytest.mark.multiproc
def test_training_refuses_a_plan_the_memory_planner_says_does_not_fit(tmp_path):
    out = tmp_path / "out"
    proc = run_launch([QWEN, f"output.dir={out}", TIGHT], timeout=120, env=CPU)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr
    assert f"the memory planner estimates {_zero3_estimate()} per cpu process for ZeRO-3" in err, err
    assert "more than the 8.0 GiB (distributed.device_memory_gb) available" in err
    assert "Fix:" in err and "train.micro_batch_size" in err and "distributed.force_memory: true" in err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.multiproc
def test_plan_shows_the_memory_refusal_and_still_exits_0(tmp_path):
    """A cluster's plan can be made on a laptop: `launch plan` says what training would refuse."""
    proc = run_launch(["plan", QWEN, TIGHT], timeout=120, env=CPU)
    assert proc.returncode == 0, proc.stderr
    assert f"training refuses this plan: the memory planner estimates {_zero3_estimate()}" in proc.stdout
    forced = run_launch(["plan", QWEN, TIGHT, "distributed.force_memory=true"], timeout=120, env=CPU)
    assert forced.returncode == 0 and "training refuses" not in forced.stdout
    roomy = run_launch(["plan", QWEN, "distributed.device_memory_gb=80"], timeout=120, env=CPU)
    assert roomy.returncode == 0 and "training refuses" not in roomy.stdout


@pytest.mark.multiproc
def test_an_absurd_micro_batch_is_refused_by_the_memory_it_needs(tmp_path):
    out = tmp_path / "out"
    proc = run_launch([TINY, f"output.dir={out}", "train.micro_batch_size=1000000"], timeout=120, env=CPU)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the memory planner estimates" in proc.stderr and "train.micro_batch_size (now 1000000)" in proc.stderr
    assert not out.exists()


@pytest.mark.unit
def test_more_cpu_processes_than_cores_are_refused(tmp_path):
    proc = run_launch(["plan", TINY, "distributed.nproc_per_node=4096"], timeout=120, env=CPU)
    assert proc.returncode == 2
    assert "distributed.nproc_per_node = 4096, but no GPU is visible" in proc.stderr and "Fix:" in proc.stderr


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["data.packing=neat", "stage=dpo"], ["data.packing: neat has no effect in stage: dpo", "only stage: sft"]),
        (["data.packing=greedy", "stage=pt"], ["data.packing: greedy has no effect in stage: pt"]),
        (["data.packing=neat", "stage=rm"], ["data.packing: neat has no effect in stage: rm"]),
        (["method.target=[]"], ["method.target: [] adapts no module", "method.target: [q_proj, v_proj]"]),
        (
            ["data.mask_history=true", "data.train_on_prompt=true"],
            ["data.mask_history (train on the last reply only) contradicts data.train_on_prompt", "remove one"],
        ),
    ],
    ids=["packing-dpo", "packing-pt", "packing-rm", "empty-target", "mask-history-and-train-on-prompt"],
)
def test_settings_a_run_would_ignore_or_cannot_honour_are_refused_at_plan(overrides, needles):
    """Each used to start ranks that trained unpacked, exited 1 on both ranks, or trained on every token. The
    message names the refused key's own override (the first)."""
    proc = run_launch(["plan", "recipes/sft_tiny.yaml", *overrides], timeout=120, env=CPU)
    assert proc.returncode == 2, proc.stdout[-2000:]
    message = proc.stderr.strip()
    assert message.count("\n") == 0 and f"override {overrides[0]}" in message and "Fix:" in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.unit
@pytest.mark.parametrize("template", ["chatglm3", "glm4", "baichuan2"])
def test_train_on_prompt_with_an_efficient_eos_template_is_refused(template):
    """LF refuses the pair: its efficient eos labels eos where a reply ends, train_on_prompt every token as itself."""
    overrides = [f"model.template={template}", "data.train_on_prompt=true"]
    with pytest.raises(RecipeError, match=f"data.train_on_prompt with model.template: {template}: .*Fix: remove"):
        load_recipe("recipes/sft_tiny.yaml", overrides)
    assert load_recipe("recipes/sft_tiny.yaml", overrides[:1])["model"]["template"] == template


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML: each anchor lists the previous one ten times (10**levels values)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.unit
def test_yaml_aliases_that_expand_to_billions_are_refused_at_once(tmp_path):
    """Any rendering of such a value (a message quoting it) used to allocate gigabytes."""
    recipe, proc = _plan(tmp_path, "model:\n  path: builtin:tiny-qwen2\n" + _bomb() + "data:\n  datasets: *l8\n")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{recipe}:" in proc.stderr and "expands through YAML aliases to more than 100,000 values" in proc.stderr


def _special_file(tmp_path, kind: str, name: str) -> str:
    if kind == "device":
        return "/dev/zero"
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    else:  # a sparse file just over the limit: nothing is written, its size alone must refuse it
        with open(path, "wb") as file:
            file.truncate(16 * 2**20 + 1)
    return str(path)


CONFIG_READERS = {  # the config files the launcher reads, and a command that reads each
    "recipe": lambda path: ["plan", path],
    "deepspeed JSON": lambda path: ["plan", TINY, f"distributed.deepspeed_config={path}"],
    "LF YAML": lambda path: ["import-lf", path],
}
REFUSALS = {
    "device": "a character device, not a regular file",
    "fifo": "a FIFO (named pipe), not a regular file",
    "oversized": "16.0 MiB, over the 16 MiB limit for a config file",
}


@pytest.mark.unit
@pytest.mark.parametrize("reader", sorted(CONFIG_READERS))
@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_config_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path, reader, kind):
    """/dev/zero used to be read until memory ran out, a FIFO to block forever."""
    path = _special_file(tmp_path, kind, "config.yaml")
    proc = run_launch(CONFIG_READERS[reader](path), timeout=60, env=CPU)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{path}" in message and REFUSALS[kind] in message and "Fix:" in message, message


# (override, words of the refusal): each used to plan fine and then fail or be refused only by train
PLAN_AND_TRAIN = {
    "root": ("output.dir=/", "is the file system root /"),
    "file": ("output.dir={file}", "it is a file, not a folder"),
    "under-a-file": ("output.dir={file}/run", "{file}, a folder on its path, is a file"),
    "proc": ("output.dir=/proc/launcher-test/run", "cannot be created in /proc"),
    "env-forward": ("distributed.env_forward=[A=B;rm]", "'A=B;rm' is not an environment variable name"),
    "master-addr": ("distributed.master_addr=node0;rm -rf ~", "distributed.master_addr = 'node0;rm -rf ~': not a host"),
}


@pytest.mark.multiproc
@pytest.mark.parametrize("case", sorted(PLAN_AND_TRAIN))
def test_plan_and_train_give_the_same_refusal(tmp_path, case):
    """`launch plan` refuses whatever `launch train` refuses, with the same message; train starts nothing."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    override, words = (part.format(file=file) for part in PLAN_AND_TRAIN[case])
    out = f"output.dir={tmp_path / 'out'}"
    messages = []
    for verb in ("plan", "train"):
        proc = run_launch([verb, TINY, out, override, "train.max_steps=1"], timeout=300, env=CPU)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
        messages.append(proc.stderr.strip().splitlines()[-1])
    assert messages[0] == messages[1] and words in messages[0], messages
    assert "Fix:" in messages[0]
    assert file.read_text() == "mine" and not (tmp_path / "out").exists()
