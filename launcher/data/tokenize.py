"""Chat template rendering, tokenization, loss masking and cutoff for SFT.

Rendering gives the conversation's text and the character span of each trained part:
- `auto`: the tokenizer's own chat template, so the ids equal
  tokenizer.apply_chat_template(messages) exactly; a span runs from the end of an
  assistant turn's generation prompt to the end of its turn, trimmed after the first eos
  (template text after the eos, like ChatML's trailing newline, stays masked). Spans come
  from a render with every content replaced by a marker, made once per conversation shape
  (roles, other keys, tools) and checked against each conversation's text, when the
  template copies contents verbatim (most do); otherwise from rendering each assistant
  turn's prefix.
- a registered template (templates.py): spans come from the renderer itself.
Texts are tokenized in batched calls and each span's ends are mapped to tokens by offsets
(tokenizers without offsets: span by span).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from launcher.data.defaults import TEMPLATE
from launcher.data.formats import is_reply
from launcher.data.gc_pause import gc_paused
from launcher.data.templates import TEMPLATES, Span, no_chat_template_message
from launcher.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trainable(self) -> bool:
        return self.labels.count(IGNORE_INDEX) < len(self.labels)

    def cut(self, length: int) -> "Encoded":
        return Encoded(self.input_ids[:length], self.labels[:length])


def _render(tokenizer, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _prefix_spans(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[Span]]:
    """Spans by rendering each assistant turn's prefix (2 renders per turn): works for any incremental template."""
    text = _render(tokenizer, messages, tools)
    eos = tokenizer.eos_token
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:index], tools, add_generation_prompt=True))
        prefix = _render(tokenizer, messages[: index + 1], tools)
        if not text.startswith(prefix) or start > len(prefix):
            raise DataError(
                "the chat template does not render conversations incrementally "
                "(a prefix of the conversation renders differently); use a registered model.template"
            )
        found = text.find(eos, start, len(prefix)) if eos else -1
        spans.append((start, found + len(eos) if found >= 0 else len(prefix)))
    return text, spans


_MARK = re.compile(
    "\ue000(\\d+)\ue001"
)  # a message index between private-use characters (in a marked render, only ours)
_GENERATION_PROMPTS: dict[tuple, str | None] = {}


def _generation_prompt(tokenizer, key: tuple) -> str | None:
    """What add_generation_prompt appends after a user turn (e.g. "<|im_start|>assistant\\n"); None if unclear.
    key: _template_key(tokenizer)."""
    if key not in _GENERATION_PROMPTS:
        probe = [{"role": "user", "content": "x"}]
        try:
            bare, prompted = (
                _render(tokenizer, probe, None),
                _render(tokenizer, probe, None, add_generation_prompt=True),
            )
        except Exception:  # noqa: BLE001 -- a template that refuses the probe: prefix renders then
            bare, prompted = "", ""
        _GENERATION_PROMPTS[key] = (
            prompted[len(bare) :] if prompted.startswith(bare) and len(prompted) > len(bare) else None
        )
    return _GENERATION_PROMPTS[key]


def _template_key(tokenizer) -> tuple:
    return (tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)


_PIECES: dict[tuple, list[str] | None] = {}  # (template key, conversation shape) -> marked render's pieces
_PIECES_LIMIT = 4096  # shapes (role sequences, tool lists) kept; past this the cache starts over


def _marked_pieces(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[str] | None:
    """The template's text around each content: a render with every content replaced by a marker, split at the
    markers ([before 0, "0", between 0 and 1, "1", ..., after the last]); None if the markers do not come out
    once each, in order."""
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    pieces = _MARK.split(_render(tokenizer, marked, tools))
    return pieces if pieces[1::2] == [str(i) for i in range(len(messages))] else None


def _spans_from_pieces(prompt: str, eos: str, text: str, messages: list[dict], pieces: list[str]) -> list[Span] | None:
    """Each reply's span if the text is exactly the pieces with the contents put back (the template copies
    contents verbatim), each reply sits right after the generation prompt, and an eos follows it before the next
    message (prompt: the generation prompt); None otherwise."""
    if "".join(p if k % 2 == 0 else messages[int(p)]["content"] for k, p in enumerate(pieces)) != text:
        return None
    starts, position = [], len(pieces[0])
    for index, message in enumerate(messages):
        starts.append(position)
        position += len(message["content"]) + len(pieces[2 * index + 2])
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end = starts[index], starts[index] + len(message["content"])
        bound = starts[index + 1] if index + 1 < len(messages) else len(text)
        found = text.find(eos, end, bound)
        if start < len(prompt) or not text.startswith(prompt, start - len(prompt)) or found < 0:
            return None
        spans.append((start, found + len(eos)))
    return spans


def _marked_spans(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[Span]] | None:
    """Spans from the conversation's render and the marked render of its shape (everything but the contents),
    made once per shape: one Jinja render per conversation after that. The pieces are checked against each
    conversation's text, so a template whose output depends on the contents is caught and the conversation's
    own marked render is used; None (the caller falls back to prefix renders) if that does not match either."""
    template = _template_key(tokenizer)
    prompt, eos = _generation_prompt(tokenizer, template), template[2]
    if not prompt or not eos or any(not isinstance(m.get("content"), str) or not m["content"] for m in messages):
        return None  # empty contents (tool-call turns) change what templates render: not comparable
    text = _render(tokenizer, messages, tools)
    key = (
        template,
        json.dumps(
            [[{k: v for k, v in m.items() if k != "content"} for m in messages], tools], sort_keys=True, default=str
        ),
    )
    if key in _PIECES:
        cached = _PIECES[key]
        spans = None if cached is None else _spans_from_pieces(prompt, eos, text, messages, cached)
        if spans is not None:
            return text, spans
    if len(_PIECES) >= _PIECES_LIMIT:
        _PIECES.clear()
    pieces = _PIECES[key] = _marked_pieces(tokenizer, messages, tools)
    spans = None if pieces is None else _spans_from_pieces(prompt, eos, text, messages, pieces)
    return None if spans is None else (text, spans)


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[Span]]:
    """The conversation rendered by the tokenizer's template and the span of each assistant reply through its eos."""
    return _marked_spans(tokenizer, messages, tools) or _prefix_spans(tokenizer, messages, tools)


def render(tokenizer, messages: list[dict], tools: list[dict] | None, template: str) -> tuple[str, list[Span]]:
    """Text and trained spans of a conversation with model.template (auto or a registered name)."""
    if template == "auto":
        if not tokenizer.chat_template:  # a hub model the planner could not look into
            raise DataError(no_chat_template_message())
        text, spans = assistant_spans(tokenizer, messages, tools)
    else:
        text, spans = TEMPLATES[template].render(messages, tools, tokenizer.eos_token or "", tokenizer.bos_token or "")
    # one span per assistant turn; an empty one (blank in the data) trains nothing, not even its eos
    replies = [m for m in messages if m["role"] == "assistant"]
    return text, [span for span, reply in zip(spans, replies, strict=True) if is_reply(reply)]


def _trained_by_offsets(offsets: list[tuple[int, int]], spans: list[Span]) -> list[bool]:
    """Whether each token (by its offsets) starts inside a span."""
    trained, span_index = [], 0
    for begin, _ in offsets:
        while span_index < len(spans) and begin >= spans[span_index][1]:
            span_index += 1
        trained.append(span_index < len(spans) and begin >= spans[span_index][0])
    return trained


def _trained_tokens(tokenizer, text: str, spans: list[Span]) -> tuple[list[int], list[bool]]:
    """Token ids of the text and whether each token starts inside a span (tokenizers without offsets)."""
    bounds = [0, *(b for span in spans for b in span), len(text)]
    ids: list[int] = []
    trained: list[bool] = []
    for index in range(len(bounds) - 1):
        piece = text[bounds[index] : bounds[index + 1]]
        piece_ids = tokenizer.encode(piece, add_special_tokens=False) if piece else []
        ids += piece_ids
        trained += [index % 2 == 1] * len(piece_ids)
    return ids, trained


def _first_token_at(encoding, position: int, count: int) -> int | None:
    """Index of the first token starting at or after character `position` (None: offsets do not say)."""
    token = encoding.char_to_token(position)
    if token is None:
        return None
    while token < count and encoding.token_to_chars(token)[0] < position:
        token += 1  # the token holding `position` starts before it: it is not trained, the next one is
    return token


def _span_labels(encoding, ids: list[int], text_length: int, spans: list[Span]) -> list[int]:
    """Labels from character spans: a token is trained iff it starts inside a span. Span ends map to tokens
    through the encoding's char_to_token (a few lookups per span, not a pass over every token's offsets)."""
    count = len(ids)
    labels = [IGNORE_INDEX] * count
    for start, end in spans:
        first = _first_token_at(encoding, start, count) if start < text_length else count
        stop = _first_token_at(encoding, end, count) if end < text_length else count
        if first is None or stop is None:  # a character no token covers (e.g. dropped by a normalizer)
            trained = _trained_by_offsets(encoding.offsets, spans)
            return [token if flag else IGNORE_INDEX for token, flag in zip(ids, trained)]
        labels[first:stop] = ids[first:stop]
    return labels


def _encode_rendered(
    tokenizer, rendered: list[tuple[str, list[Span]]], train_on_prompt: bool
) -> tuple[list[Encoded], list | None]:
    """Token ids and labels of rendered conversations: fast tokenizers in one batched call (spans to tokens by
    offsets), others piece by piece at span boundaries. Also the fast tokenizer's encodings (None for others)."""
    if not tokenizer.is_fast:
        out = []
        for text, spans in rendered:
            ids, trained = _trained_tokens(tokenizer, text, spans)
            out.append(
                Encoded(
                    ids,
                    list(ids)
                    if train_on_prompt
                    else [token if flag else IGNORE_INDEX for token, flag in zip(ids, trained)],
                )
            )
        return out, None
    if not rendered:
        return [], []
    batch = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_attention_mask=False)
    out = []
    for (text, spans), ids, encoding in zip(rendered, batch["input_ids"], batch.encodings):
        out.append(Encoded(ids, list(ids) if train_on_prompt else _span_labels(encoding, ids, len(text), spans)))
    return out, batch.encodings


@dataclass
class _Whole:
    """An over-long conversation's full text and tokenization: its shorter variants are spliced from it."""

    text: str
    ids: list[int]
    encoding: Any  # the fast tokenizer's Encoding of text (tokenizers ships no types)


class _Splicer:
    """Encodes a shorter variant of a conversation (oldest rounds dropped) without tokenizing it again.

    A fast tokenizer splits its text at added tokens (<|im_start|>, ...) before normalizing or pre-tokenizing,
    and tokenizes the pieces between them independently. So when the variant's text is whole[:h] + whole[r:]
    and the same added token starts at h and at r in the whole text, its tokens are the whole's tokens before h
    followed by those from r on. Only added tokens matched as written, eating no whitespace, qualify."""

    def __init__(self, tokenizer):
        self.ids = {
            t.content: i
            for i, t in tokenizer.added_tokens_decoder.items()
            if not (t.lstrip or t.rstrip or t.single_word or t.normalized)
        }
        by_length = sorted(self.ids, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, by_length))) if by_length else None

    def __call__(self, whole: _Whole, text: str, spans: list[Span], train_on_prompt: bool) -> Encoded | None:
        """The variant's ids and labels (spans: its trained spans), or None if it is not such a splice."""
        full, cut = whole.text, len(whole.text) - len(text)
        if self.pattern is None or cut <= 0:
            return None
        for match in self.pattern.finditer(text):
            h, token = match.start(), match.group()
            if text[:h] != full[:h]:
                return None  # the shared head ended before this added token: no later one can start the splice
            if not full.startswith(token, h + cut) or text[h:] != full[h + cut :]:
                continue
            first, rest = self._token_at(whole, h, token), self._token_at(whole, h + cut, token)
            if first is None or rest is None:
                continue
            moved = [(a, b) if b <= h else (a + cut, b + cut) for a, b in spans if b <= h or a >= h]
            if len(moved) < len(spans):
                return None  # a span across the cut
            labels = whole.ids if train_on_prompt else _span_labels(whole.encoding, whole.ids, len(full), moved)
            return Encoded(whole.ids[:first] + whole.ids[rest:], labels[:first] + labels[rest:])
        return None

    def _token_at(self, whole: _Whole, position: int, token: str) -> int | None:
        """Index of the whole text's token that is the added token `token` starting at `position`, if it is one."""
        index = whole.encoding.char_to_token(position)
        if index is None or whole.ids[index] != self.ids[token] or whole.encoding.token_to_chars(index)[0] != position:
            return None
        return index


def _eos_in_place(encoded: Encoded, eos_id: int) -> Encoded:
    """LF's efficient eos: the role token that ends a reply (the last trained token before an untrained one) is
    labelled with the eos token, the model learns to stop there."""
    labels = list(encoded.labels)
    for index in range(len(labels) - 1):
        if labels[index] != IGNORE_INDEX and labels[index + 1] == IGNORE_INDEX:
            labels[index] = eos_id
    return Encoded(encoded.input_ids, labels)


def _without_oldest_rounds(messages: list[dict]) -> list[list[dict]]:
    """The conversation with 1, 2, ... of its oldest rounds (a user turn and what follows it) removed."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    starts = [i for i, m in enumerate(messages) if m["role"] == "user" and i >= len(head)]
    return [head + messages[start:] for start in starts[1:]]


def encode_conversations(
    tokenizer,
    conversations: list[tuple[list[dict], list[dict] | None]],
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    template: str = TEMPLATE,
) -> list[Encoded]:
    """encode_conversation over many (messages, tools), the same results, faster: texts are tokenized in
    batched calls (a fast tokenizer spreads them over its threads), first all whole conversations, then, for
    those over cutoff_len, the conversations without their oldest round, then without two, ...; a variant
    that is a splice of its whole text at added tokens takes its tokens from the whole's (_Splicer)."""

    def trained_spans(items: list[tuple[list[dict], list[dict] | None]]) -> list[tuple[str, list[Span]]]:
        """Each conversation's text and the spans it trains (with mask_history, only the last reply's)."""
        out = [render(tokenizer, messages, tools, template) for messages, tools in items]
        return [(text, spans[-1:]) for text, spans in out] if mask_history else out

    with gc_paused():
        rendered = trained_spans(conversations)
        wholes, encodings = _encode_rendered(tokenizer, rendered, train_on_prompt)
        results = list(wholes)
        shorter = {
            i: _without_oldest_rounds(conversations[i][0])
            for i, e in enumerate(wholes)
            if len(e.input_ids) > cutoff_len
        }
        sources = {i: _Whole(rendered[i][0], wholes[i].input_ids, encodings[i]) for i in shorter} if encodings else {}
        del rendered, encodings
        splice = _Splicer(tokenizer) if sources else None
        step = 0
        while shorter:
            for index in [i for i, variants in shorter.items() if step == len(variants)]:
                del shorter[index]  # even the newest round alone is too long: cut its end (results[index] holds it)
                cut = results[index].cut(cutoff_len)
                results[index] = cut if cut.trainable else wholes[index].cut(cutoff_len)
            variants = dict(zip(shorter, trained_spans([(shorter[i][step], conversations[i][1]) for i in shorter])))
            encoded = {}
            for index, (text, spans) in variants.items():
                spliced = splice(sources[index], text, spans, train_on_prompt) if splice else None
                if spliced is not None:
                    encoded[index] = spliced
            unspliced = [i for i in variants if i not in encoded]
            encoded.update(
                zip(unspliced, _encode_rendered(tokenizer, [variants[i] for i in unspliced], train_on_prompt)[0])
            )
            for index, variant in encoded.items():
                results[index] = variant
                if len(variant.input_ids) <= cutoff_len:
                    del shorter[index]
            step += 1
    if template in TEMPLATES and TEMPLATES[template].efficient_eos and not train_on_prompt:
        results = [_eos_in_place(encoded, tokenizer.eos_token_id) for encoded in results]
    return results


def encode_conversation(
    tokenizer,
    messages: list[dict],
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    template: str = TEMPLATE,
    tools: list[dict] | None = None,
) -> Encoded:
    """input_ids and labels of one conversation, at most cutoff_len tokens.

    Too long: drop the oldest rounds (system kept) until it fits; if even the newest round
    does not fit, cut its end. Should that leave nothing to train (its prompt alone fills
    the cutoff), cut the whole conversation's end instead, keeping its oldest replies. The
    result can still have no trainable token; the caller drops and counts those.
    """
    return encode_conversations(tokenizer, [(messages, tools)], cutoff_len, train_on_prompt, mask_history, template)[0]
