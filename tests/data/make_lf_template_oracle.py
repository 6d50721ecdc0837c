"""Writes tests/data/lf_template_oracle.json: LLaMA-Factory's own SFT preprocessing of a few conversations, per
LF template name model.template accepts, as the oracle test_data_templates.py compares against.

Not a test: run by hand with LF's sources (no install needed), e.g.
    git -C LLaMA-Factory archive v0.9.5 src | tar -x -C /tmp/lf095   (and v0.9.4 into /tmp/lf094: baichuan2)
    python tests/data/make_lf_template_oracle.py /tmp/lf095/src /tmp/lf094/src
LF's data/mm_plugin.py imports torchaudio at module level: a stub package on PYTHONPATH is enough (text only).
Each case is LF's SupervisedDatasetProcessor._encode_data_example output, decoded: the text of input_ids and the
text of each run of labels (so an efficient-eos template shows the eos it labels in place of a role token)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

OUT = Path(__file__).with_name("lf_template_oracle.json")
LF_095 = (
    "qwen qwen3_nothink qwen3 qwen3_5_nothink qwen3_5 yi llama3 llama2 mistral gemma phi deepseek deepseek3 "
    "default chatglm3 glm4 alpaca empty"
).split()
LF_094 = ["baichuan2"]  # gone from LF 0.9.5
# the builtin tokenizer with a bos and the role tokens LF writes as single tokens ({"token": ...} slots) or
# labels eos in place of (efficient eos), as the models' own tokenizers have them
BOS = "<s>"
SPECIAL = ["<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "[gMASK]", "sop", "<reserved_106>"]
WEATHER = {
    "name": "weather",
    "description": "Look up the weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
}


def _chat(system: str | None, *rounds: tuple[str, str]) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [
        turn
        for user, reply in rounds
        for turn in ({"role": "user", "content": user}, {"role": "assistant", "content": reply})
    ]


CONVERSATIONS = {
    "system_multi_turn": {
        "messages": _chat("你是一个简洁的助手。", ("今天会下雨吗?", "不会,是晴天。"), ("适合出去玩吗?", "非常适合。"))
    },
    "single": {"messages": _chat(None, ("What is 2 + 3?", "2 + 3 = 5."))},
    "tools": {
        "tools": [WEATHER],
        "messages": [
            *_chat("Be brief.", ("Weather in Paris?", "")),
            {"role": "tool", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "It is 21 degrees."},
        ],
    },
    "thought": {"messages": _chat(None, ("Hi", "<think>\nGreet back.\n</think>\n\nHello."), ("Bye", "Bye."))},
}
CONVERSATIONS["tools"]["messages"][2]["tool_calls"] = [
    {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
]
SKIP = {"llama3/tools"}  # LF's llama3 tool prompt carries the day it runs: not registered here (docs/data.md)


def tokenizer():
    from transformers import AutoTokenizer

    from launcher.model.builtin import builtin_source_dir

    loaded = AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))
    loaded.add_special_tokens({"bos_token": BOS})
    loaded.add_tokens(SPECIAL, special_tokens=True)
    return loaded


def label_runs(tok, labels: list[int]) -> list[str]:
    runs: list[list[int]] = [[]]
    for label in labels:
        if label != -100:
            runs[-1].append(label)
        elif runs[-1]:
            runs.append([])
    return [tok.decode(run) for run in runs if run]


def _lf_turns(messages: list[dict]) -> list[dict]:
    """Internal messages as LF's: a call turn is a `function` message holding the calls' JSON."""
    turns = []
    for message in messages:
        calls = [call["function"] for call in message.get("tool_calls") or []]
        if calls:
            turns.append({"role": "function", "content": json.dumps(calls[0] if len(calls) == 1 else calls)})
        else:
            turns.append(
                {"role": {"tool": "observation"}.get(message["role"], message["role"]), "content": message["content"]}
            )
    return turns


def lf_cases(lf_src: str, names: list[str]) -> dict:
    sys.path.insert(0, lf_src)
    from llamafactory.data.mm_plugin import get_mm_plugin
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer

    cases = {}
    for name in names:
        for key, conversation in CONVERSATIONS.items():
            if f"{name}/{key}" in SKIP:
                continue
            tok = tokenizer()
            args = SimpleNamespace(
                template=name, cutoff_len=4096, train_on_prompt=False, mask_history=False, tool_format=None,
                default_system=None, enable_thinking=True, preserve_thinking=False,
            )  # fmt: skip
            template = get_template_and_fix_tokenizer(tok, args)
            template.mm_plugin = get_mm_plugin(name="base")  # text only: qwen3_5's VL plugin wants an image processor
            processor = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=None, data_args=args)
            messages = conversation["messages"]
            system = messages[0]["content"] if messages[0]["role"] == "system" else None
            turns = _lf_turns(messages[1:] if system is not None else messages)
            tools = json.dumps(conversation["tools"]) if conversation.get("tools") else None
            ids, labels = processor._encode_data_example(turns[:-1], turns[-1:], system, tools, [], [], [])
            cases[f"{name}/{key}"] = {"text": tok.decode(ids), "labels": label_runs(tok, labels)}
    for module in [m for m in sys.modules if m.startswith("llamafactory")]:
        del sys.modules[module]
    sys.path.remove(lf_src)
    return cases


def main(lf_095: str, lf_094: str) -> None:
    cases = {**lf_cases(lf_095, LF_095), **lf_cases(lf_094, LF_094)}
    oracle = {"bos": BOS, "special_tokens": SPECIAL, "conversations": CONVERSATIONS, "cases": cases}
    OUT.write_text(json.dumps(oracle, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
