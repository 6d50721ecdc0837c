"""Recipe validation: bad recipes and overrides are refused with exit code 2, a message naming
the key, and no process started."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher import cli
from launcher.recipe.load import load_recipe
from tests.conftest import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "sft_tiny.yaml")

# (overrides on the tiny recipe, text the message must contain)
BAD_OVERRIDES = [
    (["train.lrr=1e-4"], "train.lrr"),  # unknown key
    (["data.cuttoff_len=512"], "data.cutoff_len"),  # typo -> did you mean
    (["train.cutoff_len=512"], "data.cutoff_len"),  # right key, wrong section
    (["foo.bar=1"], "foo"),  # unknown section
    (["train.lr=fast"], "train.lr"),  # wrong type
    (["train.lr=-1"], "train.lr"),  # out of range
    (["train.lr=.nan"], "train.lr"),  # not finite
    (["train.epochs=0"], "train.epochs"),
    (["train.micro_batch_size=0"], "train.micro_batch_size"),
    (["train.grad_accum=1.5"], "train.grad_accum"),  # float for int
    (["train.gradient_checkpointing=maybe"], "train.gradient_checkpointing"),
    (["train.warmup_ratio=1.0"], "train.warmup_ratio"),
    (["train.scheduler=cosine_with_hats"], "train.scheduler"),
    (["train.optimizer=sgd"], "train.optimizer"),
    (["data.cutoff_len=4"], "data.cutoff_len"),
    (["data.val_size=1.5"], "data.val_size"),
    (["data.datasets=[]"], "data.datasets"),
    (["data.packing=tight"], "data.packing"),
    (["model.dtype=fp8"], "model.dtype"),
    (["model.attn=flash"], "model.attn"),
    (["model.path="], "model.path"),
    (["method.name=adapter"], "method.name"),
    (["method.rank=0"], "method.rank"),
    (["method.dropout=1"], "method.dropout"),
    (["method.variant=lokr"], "method.variant"),
    (["method.name=freeze", "method.rank=4"], "method.rank"),
    (["method.name=lora", "method.num_virtual_tokens=8"], "method.num_virtual_tokens"),
    (["model.quantization.bits=3"], "model.quantization.bits"),
    (["method={name: full}", "model.quantization={bits: 4}"], "model.quantization"),  # k-bit base only under LoRA
    (["method={name: freeze, trainable_layers: 0}"], "method.trainable_layers"),  # 0 without extra_modules
    # (new methods' rules: the message itself, since an unknown key's refusal names the key too)
    (["method={name: freeze, llama_pro: true, trainable_layers: -2}"], "method.llama_pro with method.trainable_layers"),
    (["method={name: freeze, llama_pro: true, trainable_layers: 3}"], "= 3 with method.llama_pro"),  # 4 layers
    (["method={name: oft, blocks: 4}"], "method.blocks: 4 with method.block_size: 32"),  # PEFT takes one
    (["method={name: oft, block_size: 64}"], "method.block_size = 64 does not divide"),  # down_proj's 352 inputs
    (["method={name: prefix}"], "train.gradient_checkpointing"),  # PEFT prefix tuning refuses it
    (
        ["method={name: prefix}", "train.gradient_checkpointing=false", "distributed.zero=3"],
        "distributed.zero",
    ),  # saving hangs under ZeRO-3
    (["method.loraplus_ratio=4", "distributed.offload=optimizer"], "method.loraplus_ratio"),  # DS CPU Adam, no groups
    (["method.variant=pissa", "distributed.zero=3"], "method.variant"),  # SVD of partitioned weights
    (["method.variant=pissa", "distributed.zero=2", "model.quantization={bits: 4}"], "method.variant"),
    (["method.variant=pissa", "distributed.zero=2", "model.adapter=outputs/sft_tiny"], "method.variant"),
    (["distributed.zero=4"], "distributed.zero"),
    (["distributed.engine=horovod"], "distributed.engine"),
    (["distributed.launcher=mpirun"], "distributed.launcher"),
    (["distributed.offload=all", "distributed.zero=2"], "distributed.offload"),
    (["distributed.offload=optimizer", "distributed.zero=0"], "distributed.offload"),
    (["distributed.offload=optimizer", "train.optimizer=adafactor"], "train.optimizer"),
    (["distributed.nproc_per_node=0"], "distributed.nproc_per_node"),
    (["distributed.nproc_per_node=many"], "distributed.nproc_per_node"),
    (["distributed.master_port=70000"], "distributed.master_port"),
    (["distributed.nnodes=2"], "distributed.master_addr"),  # multi-node without node 0's address
    (["distributed.timeout_minutes=0"], "distributed.timeout_minutes"),
    (["train.eval_steps=10"], "train.eval_steps"),  # eval without eval data
    (["output.report_to=[comet]"], "output.report_to"),
    (["model.rope_scaling={type: ntk}"], "model.rope_scaling.type"),
    (["model.rope_scaling={type: linear, factor: 0.5}"], "model.rope_scaling.factor"),
    (["data.cutoff_len=4096"], "data.cutoff_len"),  # beyond the builtin model's 2048 positions, no rope scaling
    (["model.rope_scaling={factor: 2}", "data.cutoff_len=4097"], "model.rope_scaling.factor"),
    (["model.dtype=fp16"], "model.dtype"),  # fp16 on a machine without CUDA
    (["stage=dpo", "train.simpo_gamma=1.0"], "train.simpo_gamma"),  # SimPO's margin with the sigmoid loss
    (["train.pref_beta=0.1"], "train.pref_beta"),  # a preference key with stage: sft
    (["train.lr"], "train.lr"),  # override without '='
    (["data.datasets=[no_such_set]"], "data.datasets"),  # checked against dataset_info.json at plan time
]

BAD_FILES = [
    ("model: [unclosed\n", "unreadable YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("model:\n  path: builtin:tiny-qwen2\ntrain:\n  epoch: 3\n", "train.epoch"),
    ("model:\n  path: builtin:tiny-qwen2\nmethod:\n  name: full\n  rank: 8\n", "method.rank"),
    ("model:\n  path: builtin:tiny-qwen2\ntrain: 3\n", "train"),
]


@pytest.fixture
def no_spawn(monkeypatch):
    """Fail the test if anything tries to start a worker process."""
    real_popen = subprocess.Popen

    def guarded(argv, *args, **kwargs):
        if any("launcher.worker" in str(part) for part in argv):
            raise AssertionError(f"a process was started for a bad recipe: {argv}")
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", guarded)


def _run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    if not any(a.startswith("distributed.master_port=") for a in argv):  # never depend on 29500 being free
        argv = [*argv, f"distributed.master_port={free_port()}"]
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("overrides,key", BAD_OVERRIDES, ids=[" ".join(o) for o, _ in BAD_OVERRIDES])
def test_bad_override_is_refused_before_any_process(overrides, key, capsys, tmp_path, monkeypatch, no_spawn):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the fp16 case must see no GPU on any machine
    code, err = _run_cli(capsys, [TINY, f"output.dir={tmp_path / 'out'}", *overrides])
    assert code == 2, err
    assert key in err, err
    assert "Fix" in err or "Did you mean" in err or "did you mean" in err, err
    assert err.count("\n") == 1, f"expected one message line, got:\n{err}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,needle", BAD_FILES, ids=[n for _, n in BAD_FILES])
def test_bad_file_is_refused(text, needle, capsys, tmp_path, no_spawn):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    code, err = _run_cli(capsys, [str(recipe)])
    assert code == 2
    assert needle in err
    assert str(recipe) in err  # names the file


def test_error_names_file_and_line(capsys, tmp_path, no_spawn):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(
        textwrap.dedent("""\
        model:
          path: builtin:tiny-qwen2
        data:
          datasets: [demo_sft]
          cuttoff_len: 512
        """)
    )
    code, err = _run_cli(capsys, ["plan", str(recipe)])
    assert code == 2
    assert f"{recipe}:5" in err and "data.cutoff_len" in err


def test_missing_recipe_file(capsys, no_spawn):
    code, err = _run_cli(capsys, ["recipes/does_not_exist.yaml"])
    assert code == 2 and "recipe file not found" in err


def test_cli_exit_code_through_real_entry_point(tmp_path):
    """The installed console script exits 2 on a bad override and starts nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", "launcher.cli", TINY, "distributed.zero=7", f"output.dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "distributed.zero" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_overrides_coerce_and_merge():
    recipe = load_recipe(TINY, ["train.lr=2e-5", "data.datasets=demo_sft", "method.target=[q_proj,v_proj]"])
    assert recipe["train"]["lr"] == 2e-5  # YAML reads 2e-5 as a string; the schema makes it a float
    assert recipe["data"]["datasets"] == ["demo_sft"]
    assert recipe["method"]["target"] == ["q_proj", "v_proj"]
    assert recipe["method"]["rank"] == 8 and "trainable_layers" not in recipe["method"]


def test_schema_is_json_and_covers_every_section(capsys):
    import json

    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {
        "model",
        "stage",
        "method",
        "data",
        "train",
        "eval",
        "distributed",
        "slurm",
        "output",
    }
    zero = schema["properties"]["distributed"]["properties"]["zero"]["anyOf"]
    assert [alt["enum"] for alt in zero] == [[0, 1, 2, 3], ["auto"]]


def test_output_dir_of_a_previous_run_is_not_mixed_into(capsys, tmp_path, no_spawn):
    out = tmp_path / "run"
    out.mkdir()
    (out / "plan.json").write_text("{}")
    code, err = _run_cli(capsys, [TINY, f"output.dir={out}"])
    assert code == 2 and "output.overwrite=true" in err
    assert (out / "plan.json").read_text() == "{}", "nothing of the old run may be touched"


def test_overwrite_refuses_to_delete_a_folder_that_is_not_a_run(capsys, tmp_path, no_spawn):
    (tmp_path / "thesis.tex").write_text("precious")
    code, err = _run_cli(capsys, [TINY, f"output.dir={tmp_path}", "output.overwrite=true"])
    assert code == 2 and "not a launcher run" in err
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_resume_from_a_missing_checkpoint_is_refused(capsys, tmp_path, no_spawn):
    code, err = _run_cli(capsys, [TINY, f"output.dir={tmp_path / 'run'}", f"train.resume={tmp_path / 'nope'}"])
    assert code == 2 and "train.resume" in err
