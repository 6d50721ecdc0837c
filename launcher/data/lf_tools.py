"""LLaMA-Factory's tool formats (its `tool_format`s default, glm4, mistral, qwen, qwen3_5): the text a tool list
adds to the system prompt, and how an assistant turn's tool calls are written, as LF 0.9.5's
data/tool_utils.py writes them, so templates.py's LF templates train what LF trains.

LF keeps each call's arguments as the data gives them and serializes them with json.dumps (a JSON string stays
a quoted string). Tool schemas may be bare ({"name", "parameters"}) or openai's {"type": "function",
"function": {...}}; each format wraps or unwraps them as LF does."""

from __future__ import annotations

import json

from launcher.errors import DataError

Call = tuple[str, object]  # (function name, arguments as the data gives them)


def _dumps(value: object, **options) -> str:
    return json.dumps(value, ensure_ascii=False, **options)


def _bare(tool: dict) -> dict:
    return tool.get("function", tool) if tool.get("type") == "function" else tool


def _wrapped(tool: dict) -> dict:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


# ---- default: "Action: / Action Input:" (every LF template without a tool format of its own) ----------------


def _param_line(name: str, param: dict, required: list) -> str:
    flags = ", required" if name in required else ""
    enum = ", should be one of [{}]".format(", ".join(param["enum"])) if param.get("enum") else ""
    items = ", where each item should be {}".format(param["items"].get("type", "")) if param.get("items") else ""
    return f"  - {name} ({param.get('type', '')}{flags}): {param.get('description', '')}{enum}{items}\n"


def default_tools(tools: list[dict]) -> str:
    described, names = "", []
    for tool in map(_bare, tools):
        parameters = tool.get("parameters") or {}
        required = parameters.get("required", [])
        args = "".join(_param_line(n, p, required) for n, p in (parameters.get("properties") or {}).items())
        described += (
            f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{args}\n"
        )
        names.append(tool["name"])
    return (
        f"You have access to the following tools:\n{described}Use the following format if using a tool:\n```\n"
        f"Action: tool name (one of [{', '.join(names)}])\nAction Input: the input to the tool, in a JSON format "
        'representing the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
    )


def default_calls(calls: list[Call]) -> str:
    return "\n".join(f"Action: {name}\nAction Input: {_dumps(arguments)}" for name, arguments in calls)


# ---- glm4 (LF's chatglm3 and glm4) ------------------------------------------------------------------------

GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)


def glm4_tools(tools: list[dict]) -> str:
    return GLM4_TOOL_PROMPT + "".join(
        f"\n\n## {tool['name']}\n\n{_dumps(tool, indent=4)}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
        for tool in map(_bare, tools)
    )


def glm4_calls(calls: list[Call]) -> str:
    if len(calls) > 1:
        raise DataError(
            f"GLM-4's tool format writes one call per assistant turn, this one has {len(calls)} (LF refuses them "
            "too). Fix: split the parallel calls into turns of their own, or use another model.template"
        )
    name, arguments = calls[0]
    return f"{name}\n{_dumps(arguments)}"


# ---- mistral (v0.3) -------------------------------------------------------------------------------------------


def mistral_tools(tools: list[dict]) -> str:
    return "[AVAILABLE_TOOLS] " + _dumps([_wrapped(tool) for tool in tools]) + "[/AVAILABLE_TOOLS]"


def mistral_calls(calls: list[Call]) -> str:
    return _dumps([{"name": name, "arguments": arguments} for name, arguments in calls])


# ---- qwen (Qwen2.5 / Qwen3) and qwen3_5 -----------------------------------------------------------------------


def qwen_tools(tools: list[dict]) -> str:
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        + "".join("\n" + _dumps(_wrapped(tool)) for tool in tools)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call>"
    )


def qwen_calls(calls: list[Call]) -> str:
    return "\n".join(
        f"<tool_call>\n{_dumps({'name': name, 'arguments': arguments})}\n</tool_call>" for name, arguments in calls
    )


def qwen3_5_tools(tools: list[dict]) -> str:
    return (
        "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
        + "".join("\n" + _dumps(_bare(tool)) for tool in tools)
        + "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
        "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
        "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple "
        "lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow "
        "the specified format: an inner <function=...></function> block must be nested within "
        "<tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional "
        "reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If there "
        "is no function call available, answer the question like normal with your current knowledge and do not "
        "tell the user about function calls\n</IMPORTANT>"
    )


def _qwen3_5_call(name: str, arguments: object) -> str:
    if not isinstance(arguments, dict):
        raise DataError(
            f"template qwen3_5 writes a call's arguments as <parameter=...> blocks, and the call to {name!r} has "
            f"no JSON object of them: {arguments!r}. Fix: give its arguments as an object"
        )
    values = (value if isinstance(value, str) else _dumps(value) for value in arguments.values())
    blocks = "".join(f"\n<parameter={key}>\n{value}\n</parameter>" for key, value in zip(arguments, values))
    return f"<tool_call>\n<function={name}>{blocks}\n</function>\n</tool_call>"


def qwen3_5_calls(calls: list[Call]) -> str:
    return "\n".join(_qwen3_5_call(name, arguments) for name, arguments in calls)
