"""Chat template rendering, tokenization, loss masking and cutoff for SFT.

Rendering gives the conversation's text and the character span of each trained part:
- `auto`: the tokenizer's own chat template, rendered prefix by prefix, so the ids equal
  tokenizer.apply_chat_template(messages) exactly; a span runs from the end of an
  assistant turn's generation prompt to the end of its turn, trimmed after the first eos
  (template text after the eos, like ChatML's trailing newline, stays masked).
- a registered template (templates.py): spans come from the renderer itself.
The whole text is tokenized once and tokens are labelled by their offsets (slow
tokenizers without offsets: span by span).
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.data.registry import DataError
from launcher.data.templates import TEMPLATES, Span

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trainable(self) -> bool:
        return any(label != IGNORE_INDEX for label in self.labels)

    def cut(self, length: int) -> "Encoded":
        return Encoded(self.input_ids[:length], self.labels[:length])


def _render(tokenizer, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[Span]]:
    """The conversation rendered by the tokenizer's template and the span of each assistant reply through its eos."""
    text = _render(tokenizer, messages, tools)
    eos = tokenizer.eos_token
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:index], tools, add_generation_prompt=True))
        prefix = _render(tokenizer, messages[: index + 1], tools)
        if not text.startswith(prefix) or start > len(prefix):
            raise DataError("the chat template does not render conversations incrementally "
                            "(a prefix of the conversation renders differently); use a registered model.template")
        found = text.find(eos, start, len(prefix)) if eos else -1
        spans.append((start, found + len(eos) if found >= 0 else len(prefix)))
    return text, spans


def render(tokenizer, messages: list[dict], tools: list[dict] | None, template: str) -> tuple[str, list[Span]]:
    """Text and trained spans of a conversation with model.template (auto or a registered name)."""
    if template == "auto":
        return assistant_spans(tokenizer, messages, tools)
    return TEMPLATES[template].render(messages, tools, tokenizer.eos_token or "")


def _trained_tokens(tokenizer, text: str, spans: list[Span]) -> tuple[list[int], list[bool]]:
    """Token ids of the text and whether each token starts inside a span."""
    if not tokenizer.is_fast:  # no offsets: tokenize piece by piece at span boundaries
        bounds = [0, *(b for span in spans for b in span), len(text)]
        ids, trained = [], []
        for index in range(len(bounds) - 1):
            piece = text[bounds[index]:bounds[index + 1]]
            piece_ids = tokenizer.encode(piece, add_special_tokens=False) if piece else []
            ids += piece_ids
            trained += [index % 2 == 1] * len(piece_ids)
        return ids, trained
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained, span_index = [], 0
    for begin, _ in encoding["offset_mapping"]:
        while span_index < len(spans) and begin >= spans[span_index][1]:
            span_index += 1
        trained.append(span_index < len(spans) and begin >= spans[span_index][0])
    return encoding["input_ids"], trained


def _encode_whole(tokenizer, messages: list[dict], tools: list[dict] | None, template: str,
                  train_on_prompt: bool, mask_history: bool) -> Encoded:
    text, spans = render(tokenizer, messages, tools, template)
    if mask_history:
        spans = spans[-1:]
    ids, trained = _trained_tokens(tokenizer, text, spans)
    if train_on_prompt:
        return Encoded(ids, list(ids))
    return Encoded(ids, [token if flag else IGNORE_INDEX for token, flag in zip(ids, trained)])


def _without_oldest_rounds(messages: list[dict]) -> list[list[dict]]:
    """The conversation with 1, 2, ... of its oldest rounds (a user turn and what follows it) removed."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    starts = [i for i, m in enumerate(messages) if m["role"] == "user" and i >= len(head)]
    return [head + messages[start:] for start in starts[1:]]


def encode_conversation(tokenizer, messages: list[dict], cutoff_len: int, train_on_prompt: bool = False,
                        mask_history: bool = False, template: str = "auto", tools: list[dict] | None = None) -> Encoded:
    """input_ids and labels of one conversation, at most cutoff_len tokens.

    Too long: drop the oldest rounds (system kept) until it fits; if even the newest round
    does not fit, cut its end. Should that leave nothing to train (its prompt alone fills
    the cutoff), cut the whole conversation's end instead, keeping its oldest replies. The
    result can still have no trainable token; the caller drops and counts those.
    """
    whole = _encode_whole(tokenizer, messages, tools, template, train_on_prompt, mask_history)
    if len(whole.input_ids) <= cutoff_len:
        return whole
    newest = whole
    for shorter in _without_oldest_rounds(messages):
        newest = _encode_whole(tokenizer, shorter, tools, template, train_on_prompt, mask_history)
        if len(newest.input_ids) <= cutoff_len:
            return newest
    cut = newest.cut(cutoff_len)
    return cut if cut.trainable else whole.cut(cutoff_len)
