"""Registered chat templates (model.template; docs/data.md lists them).

Every name but qwen2 and chatglm3_thudm is LLaMA-Factory's template of that name as LF 0.9.5's SFT preprocessing
renders and masks it (baichuan2: LF 0.9.4's, the last release that had it), so an LF-trained model continues in
its own format: the system prompt is `system or default_system` (an empty system message gets the default), what
LF trains after each reply (ChatML's "\n" after <|im_end|>, alpaca's "\n\n") is trained here too, tools and
calls are written in the template's LF tool format (lf_tools.py), a reasoning template (qwen3, qwen3_5) trains an
empty thought before each reply that has none, and an efficient-eos template (chatglm3, glm4, baichuan2) labels
the end-of-sequence in place of the role token that ends each reply. qwen2 is Qwen2's own published chat
template, chatglm3_thudm ChatGLM3's as THUDM publishes it.

A template renders a conversation to text in one pass and returns the character span of
every trained part (each assistant reply through its end-of-turn marker), so masks are
exact by construction; tokenize.py turns spans into labels. `auto` (the tokenizer's own
chat_template) is handled in tokenize.py.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher.data import lf_tools
from launcher.data.lf_tools import Call
from launcher.errors import DataError

Span = tuple[int, int]
_SLOT = re.compile(r"\{(content|eos|bos)\}")
THOUGHT_TAGS = ("<think>", "</think>")  # a reply holding either has its own thought (LF's check)


def _fill(fmt: str, content: str = "", eos: str = "", bos: str = "") -> str:
    """Substitute {content}/{eos}/{bos} in one pass (content may itself contain braces)."""
    values = {"content": content, "eos": eos, "bos": bos}
    return _SLOT.sub(lambda match: values[match.group(1)], fmt)


def _arguments(arguments: object) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _json_call(name: str, arguments: object, key: str = "arguments") -> str:
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "{key}": {_arguments(arguments)}}}'


def _each(one: Callable[[str, object], str], joiner: str = "\n") -> Callable[[list[Call]], str]:
    """A per-call format applied to each call of a turn, joined."""
    return lambda calls: joiner.join(one(name, arguments) for name, arguments in calls)


def _after_system(tool_text: Callable[[list[dict]], str]) -> Callable[[str, list[dict]], str]:
    """LF's rule: the tool text follows the system prompt (`system + tool_text`)."""
    return lambda system, tools: system + tool_text(tools)


def _json_lines(tools: list[dict]) -> str:
    return "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)


def _qwen_tools(system: str, tools: list[dict]) -> str:
    # Qwen2.5's published tool prompt, so a model tuned here sees the format it was trained with.
    return (
        system + "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        + _json_lines(tools)
        + "\n</tools>\n\nFor each function call, return a json object with function name "
        "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


# ChatGLM3 as THUDM publishes it: the chat format of chatglm3-6b's chat_template (tokenizer_config.json,
# huggingface.co/THUDM/chatglm3-6b at 103caa40: "<|role|>\\n " + content after "[gMASK]sop"; the space is what
# its sentencepiece tokenizer's encode of each content adds), and tools as ChatGLM3's own finetune code writes them
# (github.com/THUDM/ChatGLM3 finetune_chatmodel_demo/preprocess_utils.py, PROMPT_en.md): a system turn of its own
# with the tool list as 4-space-indented JSON, and a call as a message whose header carries the tool name, its
# body `tool_call(k=v, ...)` Python in a ```python block.
CHATGLM3_TOOL_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:\n"


def _chatglm3_tools(system: str, tools: list[dict]) -> str:
    tool_turn = CHATGLM3_TOOL_PROMPT + json.dumps(tools, indent=4, ensure_ascii=False)
    return tool_turn + (f"<|system|>\n {system}" if system else "")  # the dataset's own system turn follows


def _chatglm3_call(name: str, arguments: object) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            arguments = None
    if not isinstance(arguments, dict) or not all(isinstance(key, str) and key.isidentifier() for key in arguments):
        raise DataError(
            f"template chatglm3_thudm: the arguments of a call to {name!r} must be a JSON object with "
            f"identifier keys (they become tool_call(key=value, ...)), got {arguments!r}"
        )
    call = ast.Call(
        func=ast.Name(id="tool_call"),
        args=[],
        keywords=[ast.keyword(arg=key, value=ast.Constant(value)) for key, value in arguments.items()],
    )
    return f"{name}\n ```python\n{ast.unparse(call)}\n```"


def _generic_tools(system: str, tools: list[dict]) -> str:
    head = (system + "\n\n") if system else ""
    return (
        head
        + 'You can call these tools. To call one, reply with {"name": <tool name>, "arguments": {...}}:'
        + _json_lines(tools)
    )


@dataclass(frozen=True)
class Template:
    """Format strings with {content}, {eos} and {bos} (the tokenizer's eos and bos tokens) per turn kind."""

    name: str
    system: str
    user: str
    assistant: str  # the trained part: {content} plus the end-of-turn marker
    observation: str  # a tool result turn
    calls: Callable[[list[Call]], str]  # an assistant turn's tool calls
    tools: Callable[[str, list[dict]], str]  # the system prompt with the tool list
    generation: str = ""  # assistant header after a user/tool turn (the generation prompt); not trained
    prefix: str = ""
    default_system: str = ""
    reply: str = "{content}"  # how a text reply sits inside the assistant part
    call_joiner: str = "\n"  # between a reply and its tool calls
    separator: str = ""  # after each assistant turn; not trained
    stop_roles: tuple[str, ...] = ()  # no per-turn eos: the next role token ends a reply (trained), eos the last
    efficient_eos: bool = False  # LF's: that role token's label is the eos token (tokenize.py relabels it)
    empty_system_default: bool = False  # LF's rule: an empty system message gets default_system too
    system_in_first_user: bool = False  # LF's Llama2Template: the formatted system opens the first user content
    empty_thought: str = ""  # LF's reasoning templates: trained before each reply without a thought of its own

    @property
    def stop_markers(self) -> tuple[str, ...]:
        """What ends a reply besides the tokenizer's eos: the end-of-turn marker the assistant part writes after
        its content (qwen's <|im_end|>, gemma's <end_of_turn>), or the role tokens that follow it."""
        after = self.assistant.split("{content}", 1)[1]
        marker = re.split(r"\{eos\}|\n", after, maxsplit=1)[0]
        return ((marker,) if marker else ()) + self.stop_roles

    def render(self, messages: list[dict], tools: list[dict] | None, eos: str, bos: str = "") -> tuple[str, list[Span]]:
        """The conversation's text and the trained spans of its assistant turns."""
        system, turns = (
            (messages[0]["content"], messages[1:])
            if messages and messages[0]["role"] == "system"
            else (self.default_system, messages)
        )
        if self.empty_system_default and not system:
            system = self.default_system
        if tools:
            system = self.tools(system, tools)
        head = _fill(self.system, system, eos, bos) if system else ""
        text = _fill(self.prefix, eos=eos, bos=bos) + ("" if self.system_in_first_user else head)
        spans: list[Span] = []
        for index, message in enumerate(turns):
            role, content = message["role"], message.get("content") or ""
            if role == "assistant":
                start = len(text)
                text += self._assistant(message, content, eos, bos)
                spans.append((start, len(text)))
                text += self.separator
                continue
            if role not in ("user", "tool"):
                raise DataError(f"template {self.name}: cannot render a {role!r} turn here (system only comes first)")
            if index == 0 and self.system_in_first_user:
                content = head + content
            rendered = _fill(self.user if role == "user" else self.observation, content, eos, bos)
            if self.stop_roles and spans and spans[-1][1] == len(text):
                marker = next(r for r in self.stop_roles if rendered.startswith(r))
                spans[-1] = (spans[-1][0], len(text) + len(marker))
            text += rendered + self.generation
        if self.stop_roles and spans and spans[-1][1] == len(text):
            text += eos
            spans[-1] = (spans[-1][0], len(text))
        return text, spans

    def _assistant(self, message: dict, content: str, eos: str, bos: str) -> str:
        """An assistant turn's trained text: its reply and tool calls in the assistant format."""
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
        parts = ([_fill(self.reply, content)] if content or not calls else []) + ([self.calls(calls)] if calls else [])
        thought = "" if any(tag in content for tag in THOUGHT_TAGS) else self.empty_thought
        return thought + _fill(self.assistant, self.call_joiner.join(parts), eos, bos)


QWEN2 = Template(
    name="qwen2",  # ChatML as Qwen2's own chat template: the "\n" after <|im_end|> is not trained
    system="<|im_start|>system\n{content}<|im_end|>\n",
    default_system="You are a helpful assistant.",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    observation="<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n",
    generation="<|im_start|>assistant\n",
    assistant="{content}<|im_end|>",
    separator="\n",
    calls=_each(lambda name, arguments: f"<tool_call>\n{_json_call(name, arguments)}\n</tool_call>"),
    tools=_qwen_tools,
)
# LLaMA-Factory's qwen: ChatML with its own default system prompt, the "\n" after each <|im_end|> trained
LF_QWEN = replace(
    QWEN2,
    name="qwen",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    assistant="{content}<|im_end|>\n",
    separator="",
    empty_system_default=True,
    calls=lf_tools.qwen_calls,
    tools=_after_system(lf_tools.qwen_tools),
)
LF_QWEN3 = replace(LF_QWEN, name="qwen3_nothink", default_system="")  # LF's qwen without a default system prompt
LF_QWEN3_5 = replace(
    LF_QWEN3, name="qwen3_5_nothink", calls=lf_tools.qwen3_5_calls, tools=_after_system(lf_tools.qwen3_5_tools)
)
LF_EMPTY_THOUGHT = "<think>\n\n</think>\n\n"
# LF's templates without a tool format of their own: its default one, a call written where a reply is
LF_DEFAULT_TOOLS: dict[str, Any] = {"calls": lf_tools.default_calls, "tools": _after_system(lf_tools.default_tools)}
LF_RULES: dict[str, Any] = {"empty_system_default": True}
# LF's Llama2Template family: the formatted system prompt opens the first user message
LF_FUSED: dict[str, Any] = {**LF_DEFAULT_TOOLS, **LF_RULES, "system_in_first_user": True}
LF_GLM: dict[str, Any] = {
    "assistant": "{content}",
    "reply": "\n{content}",  # a tool call follows the role token directly
    "calls": lf_tools.glm4_calls,
    "tools": _after_system(lf_tools.glm4_tools),
    "stop_roles": ("<|user|>", "<|observation|>"),
    "efficient_eos": True,
    **LF_RULES,
}


def _fused(**fields: Any) -> dict[str, Any]:
    """LF_FUSED with these fields; the user format also writes tool results unless an observation one is given."""
    return {**LF_FUSED, "observation": fields["user"], **fields}


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        QWEN2,
        LF_QWEN,
        LF_QWEN3,
        replace(LF_QWEN3, name="qwen3", empty_thought=LF_EMPTY_THOUGHT),
        LF_QWEN3_5,
        replace(LF_QWEN3_5, name="qwen3_5", empty_thought=LF_EMPTY_THOUGHT),
        replace(
            LF_QWEN3,
            name="yi",
            observation="<|im_start|>user\n{content}<|im_end|>\n",  # LF's yi writes tool results as user turns
            **LF_DEFAULT_TOOLS,
        ),
        Template(
            name="llama3",
            prefix="{bos}",  # LF writes the tokenizer's bos (<|begin_of_text|> for Llama 3)
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            observation="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
            generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant="{content}<|eot_id|>",
            calls=_each(lambda name, arguments: _json_call(name, arguments, key="parameters")),
            tools=_generic_tools,
        ),
        Template(
            name="llama2",
            system="<<SYS>>\n{content}\n<</SYS>>\n\n",
            assistant="{content}{eos}",
            **_fused(user="{bos}[INST] {content} [/INST]"),
        ),
        Template(
            name="mistral",
            system="{content}\n\n",
            assistant="{content}{eos}",
            reply=" {content}",
            **_fused(
                prefix="{bos}",
                user="[INST] {content}[/INST]",
                observation='[TOOL_RESULTS] {"content": {content}}[/TOOL_RESULTS]',
                calls=lambda calls: "[TOOL_CALLS] " + lf_tools.mistral_calls(calls),
                tools=_after_system(lf_tools.mistral_tools),
            ),
        ),
        Template(
            name="gemma",
            system="{content}\n\n",
            assistant="{content}<end_of_turn>\n",
            **_fused(
                user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
                observation="<start_of_turn>tool\n{content}<end_of_turn>\n<start_of_turn>model\n",
                prefix="{bos}",
            ),
        ),
        Template(
            name="phi",
            system="<|system|>\n{content}<|end|>\n",
            user="<|user|>\n{content}<|end|>\n<|assistant|>\n",
            observation="<|user|>\n{content}<|end|>\n<|assistant|>\n",
            assistant="{content}<|end|>\n",
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
        Template(
            name="deepseek",
            prefix="{bos}",
            system="{content}\n\n",
            user="User: {content}\n\nAssistant:",
            observation="User: {content}\n\nAssistant:",
            assistant="{content}{eos}",
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
        Template(
            name="deepseek3",
            prefix="{bos}",
            system="{content}",
            user="<｜User｜>{content}<｜Assistant｜>",
            observation="<｜User｜>{content}<｜Assistant｜>",
            assistant="{content}{eos}",
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
        Template(
            name="default",
            system="System: {content}{eos}\n",
            user="Human: {content}{eos}\nAssistant:",
            observation="Human: {content}{eos}\nAssistant:",
            assistant="{content}{eos}\n",
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
        Template(
            name="baichuan2",
            system="{content}",
            user="<reserved_106>{content}<reserved_107>",
            observation="<reserved_106>{content}<reserved_107>",
            assistant="{content}",
            stop_roles=("<reserved_106>",),
            efficient_eos=True,
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
        Template(
            name="chatglm3",  # LF's chatglm3: no space after the role token, eos labels in place of later <|user|>
            prefix="[gMASK]sop",
            system="<|system|>\n{content}",
            user="<|user|>\n{content}<|assistant|>",
            observation="<|observation|>\n{content}<|assistant|>",
            **LF_GLM,
        ),
        Template(
            name="glm4",
            prefix="[gMASK]<sop>",
            system="<|system|>\n{content}",
            user="<|user|>\n{content}<|assistant|>",
            observation="<|observation|>\n{content}<|assistant|>",
            **LF_GLM,
        ),
        Template(
            name="chatglm3_thudm",
            prefix="[gMASK]sop",
            system="<|system|>\n {content}",
            user="<|user|>\n {content}",
            observation="<|observation|>\n {content}",
            generation="<|assistant|>",
            reply="\n {content}",
            call_joiner="<|assistant|>",  # each call is an assistant message of its own
            assistant="{content}",
            calls=_each(_chatglm3_call, "<|assistant|>"),
            tools=_chatglm3_tools,
            stop_roles=("<|user|>", "<|observation|>"),
        ),
        Template(
            name="alpaca",
            system="{content}",  # LF's default system ends in "\n\n"; a dataset's own is written as it is
            default_system="Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n",
            user="### Instruction:\n{content}\n\n### Response:\n",
            observation="### Instruction:\n{content}\n\n### Response:\n",
            assistant="{content}{eos}\n\n",  # LF trains the "\n\n" after each reply
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
        Template(
            name="empty",  # raw text: turns concatenated, no end token (as LF's empty)
            system="{content}",
            user="{content}",
            observation="{content}",
            assistant="{content}",
            **LF_DEFAULT_TOOLS,
            **LF_RULES,
        ),
    )
}


# this launcher's own formats; every other registered name is LLaMA-Factory's template of that name
OWN_TEMPLATES = ("qwen2", "chatglm3_thudm")
LF_TEMPLATES = tuple(name for name in TEMPLATES if name not in OWN_TEMPLATES)

CHAT_TEMPLATE_FILES = (
    "chat_template.jinja",
    "chat_template.json",
)  # beside tokenizer_config.json (transformers >= 4.43)


def template_refusal(model_dir: Path | None, stage: str, template: str) -> str | None:
    """Why `template: auto` cannot render the conversations of the local model in model_dir, or None.

    A base model (bloomz, a pre-training checkpoint) ships no chat template; stage pt renders none.
    model_dir None (a hub id not at hand): the tokenizer is checked once loaded (tokenize.render)."""
    if template != "auto" or stage == "pt" or model_dir is None:
        return None
    if any((model_dir / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return None
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no readable tokenizer config: the model check reports it
    return None if config.get("chat_template") else no_chat_template_message()


def no_chat_template_message() -> str:
    return (
        "model.template: auto uses the tokenizer's chat template, and this model's tokenizer has none (a base or "
        f"pre-training checkpoint). Fix: set model.template to one of {', '.join(TEMPLATES)} (the format the "
        "model should learn), or use stage: pt, which needs no template"
    )
