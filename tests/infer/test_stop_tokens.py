"""A reply ends where its template's turn ends: the tokenizer's eos, or the template's end-of-turn token where that
is one token of the vocabulary (gemma's <end_of_turn>, phi's <|end|> beside a base model's eos), as LF stops at
its stop words. `launch chat`, batch prediction and `launch serve` all cut there."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoTokenizer

from launcher.data.templates import TEMPLATES
from launcher.infer.chat import Sampling, encode_prompt, load_for_chat, reply, reply_batch, stop_ids

pytestmark = pytest.mark.unit

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def tiny():
    return load_for_chat("builtin:tiny-qwen2", None)


def test_each_lf_template_ends_a_reply_at_its_own_turn_marker():
    assert TEMPLATES["qwen"].stop_markers == ("<|im_end|>",)
    assert TEMPLATES["gemma"].stop_markers == ("<end_of_turn>",)
    assert TEMPLATES["phi"].stop_markers == ("<|end|>",)
    assert TEMPLATES["llama3"].stop_markers == ("<|eot_id|>",)
    assert TEMPLATES["glm4"].stop_markers == ("<|user|>", "<|observation|>")  # the next role token ends a reply
    assert TEMPLATES["alpaca"].stop_markers == ()  # eos alone


def test_stop_ids_hold_the_eos_and_the_markers_that_are_one_token(tiny):
    _, tokenizer = tiny
    eos = tokenizer.eos_token_id
    assert stop_ids(tokenizer, "auto") == [eos]
    assert stop_ids(tokenizer, "qwen") == [eos]  # <|im_end|> is this tokenizer's eos already
    assert stop_ids(tokenizer, "gemma") == [eos]  # <end_of_turn> is nine tokens here: text, not a stop
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)  # a copy, with one token more
    tokenizer.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})
    assert stop_ids(tokenizer, "gemma") == [eos, tokenizer.convert_tokens_to_ids("<end_of_turn>")]


def test_chat_and_batch_prediction_cut_the_reply_at_the_templates_end_token(tiny, monkeypatch):
    """A template whose end-of-turn token is one greedy decoding writes later: the reply is the tokens before it."""
    model, tokenizer = tiny
    greedy = Sampling(max_new_tokens=8)
    inputs = encode_prompt(tokenizer, MESSAGES, "qwen")
    with torch.no_grad():
        free = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    ids = free[0, inputs["input_ids"].shape[1] :].tolist()

    def one_token(i: int) -> bool:  # written for the first time, and its text is that one token again
        return (
            ids[i] not in ids[:i]
            and tokenizer(tokenizer.decode(ids[i]), add_special_tokens=False)["input_ids"] == ids[i : i + 1]
        )

    end = next(i for i in range(1, len(ids)) if one_token(i))
    marker = tokenizer.decode(ids[end])
    ending = dataclasses.replace(TEMPLATES["qwen"], name="ends_there", assistant="{content}" + marker + "\n")
    monkeypatch.setitem(TEMPLATES, "ends_there", ending)
    assert stop_ids(tokenizer, "ends_there") == [tokenizer.eos_token_id, ids[end]]
    cut = tokenizer.decode(ids[:end], skip_special_tokens=True)
    assert reply(model, tokenizer, MESSAGES, greedy, "ends_there") == cut
    replies, generated = reply_batch(model, tokenizer, [MESSAGES], greedy, template="ends_there")
    assert replies == [cut] and generated == end + 1  # the reply's tokens and the one that ended it
