"""Convert dataset rows of each format into one internal form (chat messages), and validate them.

Messages follow transformers' chat convention, so `model.template: auto` can hand them to
tokenizer.apply_chat_template unchanged: roles system | user | assistant | tool, a string
`content`, and on assistant turns optionally `tool_calls` [{"type": "function",
"function": {"name", "arguments"}}]. Every error names the row (file:line or file row N).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, overload

from launcher.data.datasets import DatasetSpec
from launcher.data.readers import Row
from launcher.errors import DataError

Message = dict


@dataclass
class Example:
    """One example in internal form.

    sft:        messages end with an assistant turn (every assistant turn is a training target)
    preference: messages are the prompt (ending with a user/tool turn); chosen/rejected are
                the two candidate assistant turns
    kto:        like sft, plus kto_tag (is the last assistant turn desirable)
    """

    messages: list[Message]
    where: str
    tools: list[dict] | None = None
    chosen: Message | None = None
    rejected: Message | None = None
    kto_tag: bool | None = None


def _column(row: Row, spec: DatasetSpec, key: str):
    name = spec.columns.get(key)
    return row.data.get(name) if name else None


@overload
def _text(row: Row, spec: DatasetSpec, key: str, required: Literal[True]) -> str: ...
@overload
def _text(row: Row, spec: DatasetSpec, key: str, required: Literal[False]) -> str | None: ...
def _text(row: Row, spec: DatasetSpec, key: str, required: bool) -> str | None:
    value = _column(row, spec, key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{row.where}: column {spec.columns[key]!r} ({key}) must be text, got {type(value).__name__}")
    if required and not (value or "").strip():
        raise DataError(
            f"{row.where}: missing or empty column {spec.columns[key]!r} ({key}). "
            f"Fix: fill it, or map columns.{key} in dataset_info.json to the right column"
        )
    return value or None


def _tools(row: Row, spec: DatasetSpec) -> list[dict] | None:
    """The tools column: a JSON string (LLaMA-Factory's form) or a list of function schemas."""
    value = _column(row, spec, "tools")
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{row.where}: column {spec.columns['tools']!r} (tools) is not valid JSON: {err.msg}"
            ) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise DataError(f"{row.where}: tools must be a list of function schemas (objects)")
    return value


def _kto_tag(row: Row, spec: DatasetSpec) -> bool:
    value = _column(row, spec, "kto_tag")
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # CSV cells are text
    if not isinstance(value, bool):
        raise DataError(
            f"{row.where}: column {spec.columns['kto_tag']!r} (kto_tag) must be true or false, got {value!r}"
        )
    return value


def _tool_calls(calls: object, where: str) -> list[dict]:
    """Tool calls in internal form, from {"name", "arguments"} objects or openai's {"function": {...}} ones."""
    listed: list = calls if isinstance(calls, list) else [calls]
    items = [c.get("function", c) if isinstance(c, dict) else c for c in listed]
    if not items or not all(isinstance(c, dict) and isinstance(c.get("name"), str) and "arguments" in c for c in items):
        raise DataError(f'{where}: a function call needs "name" (text) and "arguments", got {items!r}')
    return [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in items]


def _parse_calls(value: str, where: str) -> list[dict]:
    """A sharegpt function_call turn's value: JSON {"name", "arguments"} or a list of them."""
    try:
        return _tool_calls(json.loads(value), where)
    except json.JSONDecodeError:
        raise DataError(
            f'{where}: a function call must be JSON {{"name": ..., "arguments": {{...}}}}, got {value!r}'
        ) from None


def _check_order(messages: list[Message], where: str, ends_with: str) -> None:
    """After an optional system turn, user/tool and assistant turns alternate, starting with the user."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        raise DataError(f"{where}: empty conversation (no user or assistant turn)")
    for index, message in enumerate(turns):
        expected = ("user", "tool") if index % 2 == 0 else ("assistant",)
        if message["role"] not in expected:
            raise DataError(
                f"{where}: wrong role order: turn {index + 1} is {message['role']!r} but a "
                f"{' or '.join(expected)} turn belongs there (user/tool and assistant alternate, user first)"
            )
    last = "assistant" if len(turns) % 2 == 0 else "user"
    if last != ends_with:
        need = "an assistant turn to learn" if ends_with == "assistant" else "a user/tool turn (the prompt)"
        raise DataError(f"{where}: the conversation must end with {need}, it ends with a {turns[-1]['role']!r} turn")


def _assistant(content: str, calls: list[dict] | None = None) -> Message:
    message: Message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


# ---- alpaca ---------------------------------------------------------------------------------


def _alpaca(row: Row, spec: DatasetSpec) -> Example:
    """instruction (+ "\\n" + input) -> user, output -> assistant; system and history [[user, assistant], ...] kept."""
    prompt = _text(row, spec, "prompt", required=True)
    query = _text(row, spec, "query", required=False)
    messages: list[Message] = []
    system = _text(row, spec, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for turn in _column(row, spec, "history") or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise DataError(f"{row.where}: history must be a list of [user, assistant] text pairs, got {turn!r}")
        messages += [{"role": "user", "content": turn[0]}, _assistant(turn[1])]
    messages.append({"role": "user", "content": f"{prompt}\n{query}" if query else prompt})
    example = Example(messages, row.where, tools=_tools(row, spec))
    if spec.kind == "preference":
        example.chosen = _assistant(_text(row, spec, "chosen", required=True))
        example.rejected = _assistant(_text(row, spec, "rejected", required=True))
        return example
    response = _column(row, spec, "response")
    if not isinstance(response, str):
        raise DataError(f"{row.where}: missing column {spec.columns['response']!r} (response, the answer to train on)")
    messages.append(_assistant(response))
    return example


# ---- sharegpt / openai ----------------------------------------------------------------------


def _message(raw: object, spec: DatasetSpec, where: str) -> Message:
    """One sharegpt/openai message in internal form, its role read through the dataset's tags."""
    tags = spec.tags
    if not isinstance(raw, dict):
        raise DataError(
            f"{where}: expected an object with {tags['role_tag']!r} and {tags['content_tag']!r}, got {raw!r}"
        )
    role, content = raw.get(tags["role_tag"]), raw.get(tags["content_tag"])
    roles = {
        tags["user_tag"]: "user",
        tags["assistant_tag"]: "assistant",
        tags["observation_tag"]: "tool",
        tags["function_tag"]: "function",
        tags["system_tag"]: "system",
    }
    if role not in roles:
        raise DataError(
            f"{where}: unknown role {tags['role_tag']}={role!r}; known: {list(roles)}. "
            "Fix: map it with tags in dataset_info.json"
        )
    calls = raw.get("tool_calls")  # openai: tool calls live on the assistant message
    if content is None and calls:
        content = ""
    if not isinstance(content, str):
        raise DataError(f"{where}: {tags['content_tag']!r} must be text, got {content!r}")
    if roles[role] == "function":
        return _assistant("", _parse_calls(content, where))
    if roles[role] == "assistant":
        return _assistant(content, _tool_calls(calls, where) if calls else None)
    return {"role": roles[role], "content": content}


def is_reply(message: Message) -> bool:
    """An assistant turn with something to learn; an empty one in the middle of a conversation trains nothing."""
    return bool((message.get("content") or "").strip() or message.get("tool_calls"))


def _require_reply(message: Message, where: str) -> None:
    if message["role"] == "assistant" and not is_reply(message):
        raise DataError(f"{where}: empty assistant turn (nothing to learn)")


def _sharegpt(row: Row, spec: DatasetSpec) -> Example:
    raw = _column(row, spec, "messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(
            f"{row.where}: missing or empty column {spec.columns['messages']!r} (the list of messages). "
            "Fix: map columns.messages in dataset_info.json"
        )
    messages = [_message(item, spec, f"{row.where} message {index + 1}") for index, item in enumerate(raw)]
    _require_reply(messages[-1], f"{row.where} message {len(raw)}")  # LLaMA-Factory keeps blank earlier replies
    if messages[0]["role"] != "system":
        system = _text(row, spec, "system", required=False)  # a system turn in the list wins over the column
        if system:
            messages.insert(0, {"role": "system", "content": system})
    if any(m["role"] == "system" for m in messages[1:]):
        raise DataError(f"{row.where}: a system turn may only come first")
    example = Example(messages, row.where, tools=_tools(row, spec))
    if spec.kind == "preference":
        example.chosen = _candidate(row, spec, "chosen")
        example.rejected = _candidate(row, spec, "rejected")
    return example


def _candidate(row: Row, spec: DatasetSpec, key: str) -> Message:
    """A preference candidate: one assistant (or function call) message."""
    where = f"{row.where} column {spec.columns[key]!r} ({key})"
    message = _message(_column(row, spec, key), spec, where)
    _require_reply(message, where)
    if message["role"] != "assistant":
        raise DataError(
            f"{row.where}: column {spec.columns[key]!r} ({key}) must be an assistant turn, got {message['role']!r}"
        )
    return message


CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai": _sharegpt}


def to_example(row: Row, spec: DatasetSpec) -> Example:
    """One row in internal form, validated for its dataset's kind (sft, preference, kto)."""
    example = CONVERTERS[spec.formatting](row, spec)
    _check_order(example.messages, row.where, ends_with="user" if spec.kind == "preference" else "assistant")
    if spec.kind == "kto":
        example.kto_tag = _kto_tag(row, spec)
    return example


def to_text(row: Row, spec: DatasetSpec) -> str:
    """Pre-training text: columns.text, else columns.prompt as LLaMA-Factory maps it, else the `text` column."""
    prompt = spec.columns.get("prompt", "instruction")
    name = spec.columns.get("text") or (
        prompt if prompt != "instruction" else "text"
    )  # "instruction" is only the default
    value = row.data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{row.where}: missing or empty text column {name!r}. Fix: map columns.text in dataset_info.json"
        )
    return value


def alpaca_to_messages(row: dict, columns: dict[str, str], where: str) -> list[Message]:
    """The messages of one alpaca SFT row (a convenience over to_example)."""
    spec = DatasetSpec(name="", files=[], columns=columns)
    return to_example(Row(row, where), spec).messages
