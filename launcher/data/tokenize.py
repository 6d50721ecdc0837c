"""Chat template rendering, tokenization and loss masking for SFT.

Spans are found in text space: render the conversation prefix by prefix with the
tokenizer's own chat template, so the final token ids equal
tokenizer.apply_chat_template(messages) exactly, and each assistant turn's span runs from
the end of its generation prompt to the end of its turn. Tokens are labelled by offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.data.registry import DataError

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant reply (content + end of turn)."""
    text = _render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:index], add_generation_prompt=True))
        prefix = _render(tokenizer, messages[: index + 1])
        if not text.startswith(prefix) or start > len(prefix):
            raise DataError("the chat template does not render conversations incrementally "
                            "(a prefix of the conversation renders differently); use a registered model.template")
        spans.append((start, len(prefix)))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
                        mask_history: bool = False) -> Encoded:
    """input_ids and labels of one conversation; labels are -100 outside trained assistant turns.

    The trained part of a turn is its content through the end-of-turn token (eos); template
    text after the eos (ChatML's trailing newline) stays masked.
    """
    text, spans = assistant_spans(tokenizer, messages)
    if mask_history:
        spans = spans[-1:]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    eos = tokenizer.eos_token_id
    labels = [IGNORE_INDEX] * len(input_ids)
    if train_on_prompt:
        labels = list(input_ids)
    else:
        span_index, seen_eos = 0, False
        for position, (token_id, (begin, _)) in enumerate(zip(input_ids, offsets)):
            while span_index < len(spans) and begin >= spans[span_index][1]:
                span_index, seen_eos = span_index + 1, False
            if span_index < len(spans) and begin >= spans[span_index][0] and not seen_eos:
                labels[position] = token_id
                seen_eos = token_id == eos
    return Encoded(input_ids[:cutoff_len], labels[:cutoff_len])
