"""SFT data: alpaca -> messages -> token ids and loss mask, checked against the tokenizer's
own apply_chat_template (ids) and its assistant-token mask (labels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launcher.data.datasets import ALPACA_COLUMNS, DataError, resolve_dataset
from launcher.data.formats import alpaca_to_messages
from launcher.data.pipeline import build_sft_data
from launcher.data.tokenize import IGNORE_INDEX, encode_conversation, encode_conversations
from launcher.model.builtin import materialize
from tests.data.conversations import CONVERSATIONS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA_CFG = {
    "dataset_dir": str(ROOT / "data"),
    "max_samples": None,
    "cutoff_len": 2048,
    "train_on_prompt": False,
    "mask_history": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(materialize("builtin:tiny-qwen2"))


def _oracle(tokenizer, messages):
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return out["input_ids"], out["assistant_masks"]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_ids_and_labels_match_the_chat_template(tokenizer, name):
    messages = CONVERSATIONS[name]
    ids, assistant_mask = _oracle(tokenizer, messages)
    encoded = encode_conversation(tokenizer, messages, cutoff_len=4096)
    assert encoded.input_ids == ids
    trained = [int(label != IGNORE_INDEX) for label in encoded.labels]
    assert trained == list(assistant_mask), "labels must cover exactly assistant content + <|im_end|>"
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(encoded.labels, ids))
    ends = [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id and trained[i]]
    assert len(ends) == sum(m["role"] == "assistant" for m in messages), "each assistant turn's EOS is trained"


def test_train_on_prompt_and_mask_history(tokenizer):
    messages = CONVERSATIONS["system_multi_turn"]
    ids, assistant_mask = _oracle(tokenizer, messages)
    assert encode_conversation(tokenizer, messages, 4096, train_on_prompt=True).labels == ids
    last_only = encode_conversation(tokenizer, messages, 4096, mask_history=True).labels
    trained = [i for i, label in enumerate(last_only) if label != IGNORE_INDEX]
    all_assistant = [i for i, m in enumerate(assistant_mask) if m]
    assert trained and set(trained) < set(all_assistant)
    assert min(trained) > len(_oracle(tokenizer, messages[:4])[0]), "only the last assistant turn is trained"


def test_cutoff_truncates_and_drops_examples_with_nothing_to_learn(tokenizer, tmp_path):
    encoded = encode_conversation(tokenizer, CONVERSATIONS["single"], cutoff_len=12)
    assert len(encoded.input_ids) == len(encoded.labels) == 12
    rows = [
        {"instruction": "x " * 200, "output": "long prompt, answer cut off"},
        {"instruction": "short", "output": "kept"},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    data = build_sft_data([str(tmp_path / "d.json")], {**DATA_CFG, "cutoff_len": 64}, tokenizer)
    assert data.dropped == 1 and len(data.examples) == 1


def test_alpaca_columns_map_to_messages():
    row = {
        "instruction": "Translate",
        "input": "你好",
        "output": "Hello",
        "system": "Be brief.",
        "history": [["Hi", "Hello!"]],
    }
    assert alpaca_to_messages(row, ALPACA_COLUMNS, "row 0") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate\n你好"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_bundled_dataset_loads_and_every_example_trains(tokenizer):
    data = build_sft_data(["demo_sft"], DATA_CFG, tokenizer)
    assert len(data.examples) >= 200 and data.dropped == 0


def test_unknown_dataset_names_the_registry():
    with pytest.raises(DataError, match="dataset_info.json.*registered: demo_sft"):
        resolve_dataset("no_such_set", ROOT / "data")


def test_bad_row_names_dataset_and_row(tmp_path, tokenizer):
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "ok", "output": "fine"}, {"output": "no prompt"}]))
    with pytest.raises(DataError, match="row 1.*instruction"):
        build_sft_data([str(tmp_path / "bad.json")], DATA_CFG, tokenizer)


def test_validation_split_is_seeded_and_disjoint():
    from launcher.data.splits import split_validation

    examples = [{"input_ids": [i]} for i in range(100)]
    train, held = split_validation(examples, 0.1, seed=42)
    assert len(held) == 10 and len(train) == 90
    assert split_validation(examples, 0.1, seed=42) == (train, held)
    assert {e["input_ids"][0] for e in train}.isdisjoint(e["input_ids"][0] for e in held)


TRIMMING = (  # a template that does not copy contents verbatim (trims them): spans come from prefix renders
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] | trim }}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_a_template_that_rewrites_contents_still_matches_the_chat_template(tokenizer, name):
    messages = [{**m, "content": f"  {m['content']} "} for m in CONVERSATIONS[name]]
    original = tokenizer.chat_template
    tokenizer.chat_template = TRIMMING
    try:
        ids, assistant_mask = _oracle(tokenizer, messages)
        encoded = encode_conversation(tokenizer, messages, cutoff_len=4096)
    finally:
        tokenizer.chat_template = original
    assert encoded.input_ids == ids
    assert [int(label != IGNORE_INDEX) for label in encoded.labels] == list(assistant_mask)


THINKING = (  # drops an assistant reply's reasoning, as Qwen3's template does: output depends on the contents
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% set content = message['content'].split('</think>')[-1] if message['role'] == 'assistant' else message['content'] %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ content }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ content }}<|im_end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_conversations_of_one_shape_whose_render_depends_on_contents_each_match_the_chat_template(tokenizer):
    # The template's text around the contents is learnt once per shape (roles, tools) and reused; a conversation
    # it does not fit (here: reasoning dropped) must be caught and get its own exact spans.
    plain = CONVERSATIONS["system_multi_turn"]
    thinking = [{**m, "content": "<think>hmm</think>" + m["content"]} if m["role"] == "assistant" else m for m in plain]
    original = tokenizer.chat_template
    tokenizer.chat_template = THINKING
    try:
        batch = [(plain, None), (thinking, None), (plain, None)]
        encoded = encode_conversations(tokenizer, batch, cutoff_len=4096)
        oracles = [_oracle(tokenizer, messages) for messages, _ in batch]
    finally:
        tokenizer.chat_template = original
    assert len(oracles[1][0]) == len(oracles[0][0]), "the reasoning is dropped from the render"
    for got, (ids, assistant_mask) in zip(encoded, oracles):
        assert got.input_ids == ids
        assert [int(label != IGNORE_INDEX) for label in got.labels] == list(assistant_mask)


def test_batched_encoding_and_workers_give_the_single_conversation_results(tokenizer):
    from launcher.data.pipeline import encode_examples, load_examples

    examples = load_examples(["demo_sft", "demo_sharegpt", "demo_openai"], DATA_CFG)
    assert len(examples) >= 128  # enough for 2 workers (smaller data is encoded in-process)
    cfg = {
        **DATA_CFG,
        "cutoff_len": 48,
    }  # many conversations lose rounds or get cut, each after its own number of passes
    single = [encode_conversation(tokenizer, e.messages, 48, tools=e.tools) for e in examples]
    expected = [{"input_ids": e.input_ids, "labels": e.labels} for e in single if e.trainable]
    for workers in (1, 2):
        data = encode_examples(examples, {**cfg, "num_workers": workers}, tokenizer)
        assert data.examples == expected and data.dropped == len(single) - len(expected)
