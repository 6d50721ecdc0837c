"""model.template: a base model without a chat template is refused before launch (not a
transformers ValueError on every rank), stage pt needs none, and LLaMA-Factory's template names
are accepted, with no did-you-mean into another model family."""

from __future__ import annotations

import json
import shutil

import pytest

from launcher.model.builtin import materialize
from tests.conftest import run_launch

pytestmark = pytest.mark.unit

TINY = "recipes/sft_tiny.yaml"


@pytest.fixture()
def base_model(tmp_path):
    """The tiny model as a base checkpoint: its tokenizer ships no chat template."""
    folder = tmp_path / "base"
    shutil.copytree(materialize("builtin:tiny-qwen2"), folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    return folder


def test_auto_template_on_a_base_model_is_refused_naming_the_templates(base_model):
    proc = run_launch(["plan", TINY, f"model.path={base_model}"], timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert "has none" in proc.stderr and "qwen2" in proc.stderr and "stage: pt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_named_template_or_stage_pt_plans_the_base_model(base_model):
    assert run_launch(["plan", TINY, f"model.path={base_model}", "model.template=qwen2"], timeout=60).returncode == 0
    proc = run_launch(["plan", "recipes/pt_tiny.yaml", f"model.path={base_model}"], timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["qwen3_nothink", "chatglm3"])
def test_llama_factorys_template_names_are_templates_of_their_own(name):
    proc = run_launch(["plan", TINY, f"model.template={name}"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"template: {name}\n" in proc.stdout


@pytest.mark.parametrize("name", ["llava", "chatglm2"])
def test_unknown_template_gets_no_guess_from_another_family(name):
    proc = run_launch(["plan", TINY, f"model.template={name}"], timeout=60)
    assert proc.returncode == 2
    assert "did you mean" not in proc.stderr.lower()
    assert "model.template: auto uses the model's own chat template" in proc.stderr
    assert all(f"'{accepted}'" in proc.stderr for accepted in ("auto", "qwen3_nothink", "deepseek3", "chatglm3_thudm"))
