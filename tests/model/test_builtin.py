"""The embedded model builtin:tiny-qwen2 (config, tokenizer, chat template, deterministic
weights, cache) and the bundled demo dataset."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.model import builtin
from tests.conftest import imported_after

ROOT = Path(__file__).resolve().parents[2]
NAME = "builtin:tiny-qwen2"
SOURCE = builtin.builtin_source_dir(NAME)
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")

EXPECTED_IDS = {
    "<|endoftext|>": 0,
    "<|im_start|>": 1,
    "<|im_end|>": 2,
    "<tool_call>": 3,
    "</tool_call>": 4,
    "<tool_response>": 5,
    "</tool_response>": 6,
}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SOURCE)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    return builtin.materialize(NAME, str(tmp_path_factory.mktemp("builtin-cache")))


# --------------------------------------------------------------------------- module API


@pytest.mark.unit
def test_module_imports_no_torch():
    code = "import launcher.model.builtin as b; p = b.builtin_config_path('builtin:tiny-qwen2'); assert p.is_file(), p"
    assert imported_after(code, ("torch", "transformers", "tokenizers")) == []


@pytest.mark.unit
def test_names_and_errors():
    assert builtin.BUILTIN_PREFIX == "builtin:"
    assert builtin.is_builtin(NAME)
    assert builtin.is_builtin("builtin:whatever")  # syntactically builtin, unknown name
    assert not builtin.is_builtin("Qwen/Qwen2-7B-Instruct")
    assert not builtin.is_builtin("./models/tiny")
    assert "tiny-qwen2" in builtin.BUILTIN_MODELS
    config = json.loads(builtin.builtin_config_path(NAME).read_text())
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    with pytest.raises(ValueError, match="builtin:tiny-qwen2"):
        builtin.materialize("builtin:no-such-model")
    with pytest.raises(ValueError, match="builtin:tiny-qwen2"):
        builtin.builtin_config_path("builtin:no-such-model")
    with pytest.raises(ValueError):
        builtin.materialize("Qwen/Qwen2-7B-Instruct")


@pytest.mark.unit
def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path))
    assert builtin.builtin_cache_dir() == tmp_path / "builtin"
    monkeypatch.delenv("LAUNCHER_CACHE")
    assert builtin.builtin_cache_dir() == Path.home() / ".cache" / "llm-launcher" / "builtin"


@pytest.mark.unit
def test_fingerprint_follows_source_files(monkeypatch, tmp_path):
    original = builtin.fingerprint(NAME)
    assert re.fullmatch(r"[0-9a-f]{12}", original)
    copy = tmp_path / builtin.BUILTIN_MODELS["tiny-qwen2"]
    shutil.copytree(SOURCE, copy)
    monkeypatch.setattr(builtin, "_PACKAGE_DIR", tmp_path)
    assert builtin.fingerprint(NAME) == original  # same bytes, same hash
    config = json.loads((copy / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (copy / "config.json").write_text(json.dumps(config))
    assert builtin.fingerprint(NAME) != original
    monkeypatch.setattr(builtin, "BUILD_VERSION", builtin.BUILD_VERSION + 1)
    monkeypatch.setattr(builtin, "_PACKAGE_DIR", SOURCE.parent)
    assert builtin.fingerprint(NAME) != original


@pytest.mark.unit
def test_config_matches_tokenizer(tokenizer):
    config = json.loads((SOURCE / "config.json").read_text())
    generation = json.loads((SOURCE / "generation_config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) == 2048
    assert config["eos_token_id"] == generation["eos_token_id"] == tokenizer.eos_token_id == 2
    assert config["pad_token_id"] == generation["pad_token_id"] == tokenizer.pad_token_id == 0
    assert config["bos_token_id"] is None and tokenizer.bos_token is None
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (128, 352, 4)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["tie_word_embeddings"] is False
    assert tokenizer.model_max_length == 2048


# --------------------------------------------------------------------------- weights


_CHILD = (
    "import sys; from launcher.model.builtin import materialize; "
    "print('DIR=' + materialize('builtin:tiny-qwen2', sys.argv[1]))"
)


@pytest.mark.multiproc
def test_materialize_is_deterministic_across_calls_and_processes(tmp_path):
    first = builtin.materialize(NAME, str(tmp_path / "a"))
    second = builtin.materialize(NAME, str(tmp_path / "b"))
    assert first != second
    assert builtin.materialize(NAME, str(tmp_path / "a")) == first  # cached
    assert Path(first).name == f"tiny-qwen2-{builtin.fingerprint(NAME)}"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "child")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr
    (other,) = [line[4:] for line in child.stdout.splitlines() if line.startswith("DIR=")]
    weights = {d: (Path(d) / "model.safetensors").read_bytes() for d in (first, second, other)}
    assert len(set(weights.values())) == 1, "weights differ between calls or processes"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (Path(first) / name).read_bytes() == (SOURCE / name).read_bytes()


@pytest.mark.unit
def test_materialize_concurrent_callers(monkeypatch, tmp_path, built):
    """Several callers at once (threads here; ranks are processes, same code path): all get
    the same folder, one build wins the rename, the others discard their temp copies."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    real_build, builds = builtin._build, []

    def counting_build(path, out):
        builds.append(out)
        real_build(path, out)

    monkeypatch.setattr(builtin, "_build", counting_build)
    barrier = Barrier(3)

    def call(_):
        barrier.wait()
        return builtin.materialize(NAME, str(tmp_path))

    with ThreadPoolExecutor(3) as pool:
        results = set(pool.map(call, range(3)))
    assert results == {str(tmp_path / Path(built).name)}
    assert len(builds) >= 2  # the race really happened: more than one caller built a copy
    assert [p.name for p in tmp_path.iterdir()] == [Path(built).name]  # no temp leftovers
    target = Path(results.pop()) / "model.safetensors"
    assert target.read_bytes() == (Path(built) / "model.safetensors").read_bytes()


@pytest.mark.unit
def test_materialize_losing_the_race(monkeypatch, tmp_path, built):
    """A process whose rename fails because the folder appeared meanwhile uses that folder."""
    real_build = builtin._build
    target = tmp_path / Path(built).name

    def build_then_lose(path, out):
        real_build(path, out)
        shutil.copytree(built, target)  # the "other rank" finishes first

    monkeypatch.setattr(builtin, "_build", build_then_lose)
    assert builtin.materialize(NAME, str(tmp_path)) == str(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.multiproc
def test_model_loads_and_trains_a_step(built, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(built)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 1_263_744
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    loaded_tok = AutoTokenizer.from_pretrained(built)
    messages = [
        {"role": "user", "content": "What is LoRA? 什么是LoRA？"},
        {"role": "assistant", "content": "A low-rank adapter."},
    ]
    batch = loaded_tok.apply_chat_template(messages, return_dict=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (1, batch["input_ids"].shape[1], 2048)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


# --------------------------------------------------------------------------- tokenizer

ROUND_TRIP = [
    "Fine-tuning a 7B model with LoRA needs far less memory than full fine-tuning.",
    "微调大语言模型时，通常只在回答部分计算损失。",
    "Mixed 中英文 text: batch size = 4 × 8，学习率 1e-4!",
    "def add(a, b):\n    return a + b\n\n\tindented\r\nwindows line",
    "  leading and trailing spaces  ",
    "emoji 🙂 and symbols ©®™ °C ½ — “quotes” 「括号」",
    '{"name": "get_weather", "arguments": {"city": "北京"}}',
]


@pytest.mark.unit
@pytest.mark.parametrize("text", ROUND_TRIP)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


@pytest.mark.unit
def test_tokenizer_matches_raw_tokenizer_json(tokenizer):
    """transformers 5 rebuilds Qwen2's pipeline in code; it must equal the committed file's."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(SOURCE / "tokenizer.json"))
    for text in ROUND_TRIP + ["<|im_start|>user\nhi<|im_end|>\n<tool_call>\n{}\n</tool_call>"]:
        assert tokenizer.encode(text, add_special_tokens=False) == raw.encode(text).ids


@pytest.mark.unit
def test_special_and_tool_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    for token, token_id in EXPECTED_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert tokenizer.encode("hi", add_special_tokens=True) == tokenizer.encode("hi", add_special_tokens=False)
    text = "<|im_start|>assistant\n<tool_call>\n{}\n</tool_call><|im_end|>"
    kept = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False), skip_special_tokens=True)
    assert kept == "assistant\n<tool_call>\n{}\n</tool_call>"  # tool markers are not special


# --------------------------------------------------------------------------- chat template


@pytest.mark.unit
def test_chat_template_plain(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.unit
def test_chat_template_tools(tokenizer):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "天气？"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            ],
        },
        {"role": "tool", "content": '{"temp": 20}'},
        {"role": "tool", "content": '{"temp": 18}'},
        {"role": "assistant", "content": "20 and 18."},
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more of the functions below to help with the request. "
        "Their signatures are given as JSON inside <tools></tools>:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
        "</tools>\n\nTo call a function, reply with a JSON object holding its name and arguments "
        "inside <tool_call></tool_call> tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n天气？<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        '<tool_response>\n{"temp": 20}\n</tool_response>\n'
        '<tool_response>\n{"temp": 18}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n20 and 18.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tools=tools, tokenize=False) == expected
    # content before the calls, and a custom system prompt, with tools
    messages = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
    ]
    rendered = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nUse tools.\n\n# Tools\n\n")
    assert rendered.endswith(
        "<|im_start|>assistant\nChecking.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    )


@pytest.mark.unit
def test_chat_template_assistant_mask(tokenizer):
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids = out["input_ids"]
    assert ids == tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    picked = [i for i, keep in zip(ids, out["assistant_masks"]) if keep]
    assert tokenizer.decode(picked) == "2<|im_end|>4<|im_end|>"


# --------------------------------------------------------------------------- generated files are current


@pytest.mark.unit
def test_tokenizer_files_are_current():
    from launcher.model.builtin import train_tokenizer

    assert train_tokenizer.main(["--check"]) == 0


@pytest.mark.unit
def test_demo_dataset_file_is_current():
    sys.path.insert(0, str(ROOT / "data"))
    try:
        import make_demo_sft
    finally:
        sys.path.remove(str(ROOT / "data"))
    assert make_demo_sft.main(["--check"]) == 0


# --------------------------------------------------------------------------- dataset


@pytest.mark.unit
def test_demo_dataset():
    info = json.loads((ROOT / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    entry = info["demo_sft"]
    assert entry["formatting"] == "alpaca"
    assert entry["columns"] == {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    }
    path = ROOT / "data" / entry["file_name"]
    records = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(records, list) and len(records) >= 200
    allowed = {"instruction", "input", "output", "system", "history"}
    for r in records:
        assert set(r) <= allowed, r
        assert isinstance(r["instruction"], str) and r["instruction"].strip(), r
        assert isinstance(r["output"], str) and r["output"].strip(), r
        assert isinstance(r.get("input", ""), str)
        for turn in r.get("history", []):
            assert len(turn) == 2 and all(isinstance(t, str) and t.strip() for t in turn), r
    with_cjk = sum(bool(CJK.search(json.dumps(r, ensure_ascii=False))) for r in records)
    assert with_cjk >= 0.4 * len(records)
    assert len(records) - with_cjk >= 0.3 * len(records)  # plenty of English-only examples too
    assert sum("system" in r for r in records) >= 3
    assert sum("history" in r for r in records) >= 3
    keys = [(r["instruction"], r.get("input", "")) for r in records]
    assert len(set(keys)) == len(keys), "duplicate examples"
