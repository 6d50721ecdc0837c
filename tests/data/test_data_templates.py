"""Registered templates, cutoff truncation and `launch data`.

Oracles: the builtin tokenizer's own ChatML template (apply_chat_template ids and assistant
mask) for qwen2; LLaMA-Factory's own preprocessing output (lf_template_oracle.json) for LF's template names;
ChatGLM3's published chat format, written out by hand, for chatglm3_thudm."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from launcher.cli import main
from launcher.data.datasets import DataError
from launcher.data.pipeline import build_sft_data
from launcher.data.templates import TEMPLATES
from launcher.data.tokenize import IGNORE_INDEX, encode_conversation, encode_conversations, render
from launcher.model.builtin import builtin_source_dir
from launcher.recipe.import_lf import LF_TEMPLATES
from tests.data.conversations import CALL, CONVERSATIONS
from tests.data.make_lf_template_oracle import label_runs
from tests.data.make_lf_template_oracle import tokenizer as oracle_tokenizer

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CFG = {
    "dataset_dir": str(ROOT / "data"),
    "max_samples": None,
    "cutoff_len": 1024,
    "train_on_prompt": False,
    "mask_history": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(builtin_source_dir("builtin:tiny-qwen2"))


def _trained_text(tokenizer, encoded) -> list[str]:
    """The decoded runs of trained tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_qwen2_equals_the_builtin_chatml_template_token_for_token(tokenizer, name):
    messages = CONVERSATIONS[name]
    oracle = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    encoded = encode_conversation(tokenizer, messages, 4096, template="qwen2")
    assert encoded.input_ids == oracle["input_ids"]
    assert [int(label != IGNORE_INDEX) for label in encoded.labels] == list(oracle["assistant_masks"])
    assert encoded == encode_conversation(tokenizer, messages, 4096, template="auto")


def test_qwen2_tools_use_the_published_qwen_tool_prompt(tokenizer):
    tools = [{"name": "weather", "parameters": {"type": "object"}}]
    text, _ = render(tokenizer, CONVERSATIONS["tool_call"], tools, "qwen2")
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist "
        "with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"name": "weather", "parameters": {"type": "object"}}\n</tools>\n\n'
    )
    assert text.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>'
        "<|im_end|>\n<|im_start|>assistant\nIt is 21 degrees in Paris.<|im_end|>\n"
    )


EXPECTED = {  # (rendered text of system_multi_turn, trained parts): the published formats
    # chatglm3-6b's own chat_template (huggingface.co/THUDM/chatglm3-6b tokenizer_config.json at 103caa40):
    # "[gMASK]sop" then "<|role|>\n " + content per message, "<|assistant|>" as the generation prompt
    "chatglm3_thudm": (
        "[gMASK]sop<|system|>\n 你是一个简洁的助手。<|user|>\n 今天会下雨吗?<|assistant|>\n 不会,是晴天。"
        "<|user|>\n 适合出去玩吗?<|assistant|>\n 非常适合。<|im_end|>",
        # no eos per turn: the next role token ends a reply and is trained, eos ends the last (as
        # ChatGLM3's finetune_chatmodel_demo/preprocess_utils.py masks it)
        ["\n 不会,是晴天。<|user|>", "\n 非常适合。<|im_end|>"],
    ),
}
LF_QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# LLaMA-Factory's own SFT preprocessing of CONVERSATIONS-like conversations, per LF template name registered
# here (LF 0.9.5; baichuan2 0.9.4), written by make_lf_template_oracle.py: decoded text and label runs
LF_ORACLE = json.loads(Path(__file__).with_name("lf_template_oracle.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def lf_tokenizer():
    return oracle_tokenizer()


def test_every_lf_template_name_has_llama_factorys_output_to_match():
    assert {case.split("/")[0] for case in LF_ORACLE["cases"]} == set(LF_TEMPLATES)
    assert set(TEMPLATES) - set(LF_TEMPLATES) == {"qwen2", "chatglm3_thudm"}


@pytest.mark.parametrize("case", sorted(LF_ORACLE["cases"]))
def test_lf_templates_render_and_label_as_llama_factory_does(lf_tokenizer, case):
    """Text and labels (not only the mask: an efficient-eos template labels eos in place of the role token that
    ends a reply) equal LF's for a system prompt, LF's default one, two rounds, a tool call and a thought."""
    name, key = case.split("/")
    conversation = LF_ORACLE["conversations"][key]
    messages, tools = conversation["messages"], conversation.get("tools")
    encoded = encode_conversation(lf_tokenizer, messages, 4096, template=name, tools=tools)
    assert lf_tokenizer.decode(encoded.input_ids) == LF_ORACLE["cases"][case]["text"]
    assert label_runs(lf_tokenizer, encoded.labels) == LF_ORACLE["cases"][case]["labels"]


@pytest.mark.parametrize(
    "name, calls, message",
    [
        ("glm4", [CALL, CALL], "GLM-4's tool format writes one call per assistant turn, this one has 2"),
        (
            "qwen3_5",
            [{"type": "function", "function": {"name": "weather", "arguments": '"Paris"'}}],
            "template qwen3_5 writes a call's arguments as <parameter=...> blocks",
        ),
    ],
)
def test_calls_an_lf_tool_format_cannot_write_are_refused(tokenizer, name, calls, message):
    messages = [CONVERSATIONS["tool_call"][0], {"role": "assistant", "content": "", "tool_calls": calls}]
    with pytest.raises(DataError, match=re.escape(message)):
        render(tokenizer, messages, [{"name": "weather", "parameters": {"type": "object"}}], name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_templates_render_their_published_format_and_train_replies_only(tokenizer, name):
    text, trained = EXPECTED[name]
    assert render(tokenizer, CONVERSATIONS["system_multi_turn"], None, name)[0] == text
    encoded = encode_conversation(tokenizer, CONVERSATIONS["system_multi_turn"], 4096, template=name)
    assert encoded.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _trained_text(tokenizer, encoded) == trained


def test_chatglm3_tools_follow_chatglm3s_own_finetune_format(tokenizer):
    """Golden text from github.com/THUDM/ChatGLM3 finetune_chatmodel_demo/preprocess_utils.py (and PROMPT_en.md):
    the tool list is a system turn of its own (prefix sentence + json.dumps(tools, indent=4)) before the
    dataset's system turn; a call is an assistant message whose header carries the tool name and whose body is
    tool_call(...) Python (ast-unparsed keyword constants) in a ```python block; the result is an observation."""
    tools = [{"name": "weather", "parameters": {"type": "object"}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
    ]
    text, _ = render(tokenizer, messages, tools, "chatglm3_thudm")
    assert text == (
        "[gMASK]sop<|system|>\n Answer the following questions as best as you can. You have access to the "
        'following tools:\n[\n    {\n        "name": "weather",\n        "parameters": {\n            "type": '
        '"object"\n        }\n    }\n]<|system|>\n Be brief.<|user|>\n Weather in Paris?<|assistant|>\n '
        "Let me look.<|assistant|>weather\n ```python\ntool_call(city='Paris')\n```<|observation|>\n "
        '{"temp": 21}<|assistant|>\n 21 degrees.<|im_end|>'
    )
    encoded = encode_conversation(tokenizer, messages, 4096, template="chatglm3_thudm", tools=tools)
    assert _trained_text(tokenizer, encoded) == [
        "\n Let me look.<|assistant|>weather\n ```python\ntool_call(city='Paris')\n```<|observation|>",
        "\n 21 degrees.<|im_end|>",
    ]
    bad = [
        messages[1],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "[1, 2]"}}],
        },
    ]
    with pytest.raises(DataError, match="chatglm3_thudm: the arguments of a call to 'weather' must be a JSON object"):
        render(
            tokenizer,
            bad + [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}],
            tools,
            "chatglm3_thudm",
        )


@pytest.mark.parametrize("name, system", [("qwen", LF_QWEN_SYSTEM), ("qwen3_nothink", None)])
@pytest.mark.parametrize("given", [[], [{"role": "system", "content": ""}]])
def test_lf_qwen_default_system_also_replaces_an_empty_one(tokenizer, name, system, given):
    """LF's rule is `system or default_system`: no system message and an empty one render alike."""
    messages = [*given, *CONVERSATIONS["single"]]
    text, _ = render(tokenizer, messages, None, name)
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    assert text == head + "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n2 + 3 = 5.<|im_end|>\n"
    trained = _trained_text(tokenizer, encode_conversation(tokenizer, messages, 4096, template=name))
    assert trained == ["2 + 3 = 5.<|im_end|>\n"]


def test_lf_llama3_keeps_message_content_untrimmed(tokenizer):
    """LF's llama3 writes content as it is (Meta's own template trims it): a trailing newline is trained."""
    messages = [{"role": "user", "content": " Hi\n"}, {"role": "assistant", "content": "Hello.\n"}]
    encoded = encode_conversation(tokenizer, messages, 4096, template="llama3")
    assert tokenizer.decode(encoded.input_ids) == (  # no bos: the builtin tokenizer has none
        "<|start_header_id|>user<|end_header_id|>\n\n Hi\n<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.\n<|eot_id|>"
    )
    assert _trained_text(tokenizer, encoded) == ["Hello.\n<|eot_id|>"]


def test_alpaca_default_system_and_llama3_tool_turns(tokenizer):
    text, _ = render(tokenizer, CONVERSATIONS["single"], None, "alpaca")
    assert text.startswith(
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nWhat is 2 + 3?\n\n### Response:\n"
    )
    encoded = encode_conversation(tokenizer, CONVERSATIONS["tool_call"], 4096, template="llama3")
    assert _trained_text(tokenizer, encoded) == [
        '{"name": "weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is 21 degrees in Paris.<|eot_id|>",
    ]
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>' in tokenizer.decode(
        encoded.input_ids
    )


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_train_on_prompt_and_mask_history_with_registered_templates(tokenizer, template):
    messages = CONVERSATIONS["system_multi_turn"]
    everything = encode_conversation(tokenizer, messages, 4096, train_on_prompt=True, template=template)
    assert everything.labels == everything.input_ids
    all_turns = _trained_text(tokenizer, encode_conversation(tokenizer, messages, 4096, template=template))
    assert (
        _trained_text(tokenizer, encode_conversation(tokenizer, messages, 4096, mask_history=True, template=template))
        == all_turns[-1:]
    )


class SlowTokenizer:
    """The builtin tokenizer without offsets, as a sentencepiece-style slow tokenizer would be."""

    is_fast = False

    def __init__(self, fast):
        self.fast, self.eos_token, self.bos_token = fast, fast.eos_token, fast.bos_token

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.fast.encode(text, add_special_tokens=add_special_tokens)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_tokenizers_without_offsets_get_the_same_ids_and_labels(tokenizer, name):
    messages = CONVERSATIONS[name]
    assert encode_conversation(SlowTokenizer(tokenizer), messages, 4096, template="qwen2") == encode_conversation(
        tokenizer, messages, 4096, template="qwen2"
    )


# ---- cutoff ---------------------------------------------------------------------------------------


def _rounds(*pairs: tuple[str, str]) -> list[dict]:
    return [
        m for user, reply in pairs for m in ({"role": "user", "content": user}, {"role": "assistant", "content": reply})
    ]


@pytest.mark.parametrize("template", ["auto", "llama3"])
def test_cutoff_drops_the_oldest_rounds_whole_and_keeps_the_system(tokenizer, template):
    system = [{"role": "system", "content": "Be brief."}]
    old, middle, new = ("long question " * 40, "long answer " * 40), ("q2", "a2"), ("q3", "a3")
    kept = encode_conversation(tokenizer, system + _rounds(middle, new), 4096, template=template)
    full = encode_conversation(tokenizer, system + _rounds(old, middle, new), 4096, template=template)
    assert len(full.input_ids) > len(kept.input_ids) + 50
    assert (
        encode_conversation(tokenizer, system + _rounds(old, middle, new), len(kept.input_ids), template=template)
        == kept
    )


def test_cutoff_cuts_the_newest_round_when_it_alone_is_too_long(tokenizer):
    messages = _rounds(("q1", "a1"), ("q2", "answer " * 100))
    newest = encode_conversation(tokenizer, messages[2:], 4096)
    cut = encode_conversation(tokenizer, messages, 40)
    assert cut == newest.cut(40) and cut.trainable


def test_cutoff_keeps_the_oldest_replies_when_the_newest_prompt_fills_it(tokenizer):
    messages = _rounds(("q1", "a1"), ("question " * 100, "a2"))
    cut = encode_conversation(tokenizer, messages, 40)
    assert cut == encode_conversation(tokenizer, messages, 4096).cut(40)
    assert _trained_text(tokenizer, cut) == ["a1<|im_end|>"]


def _conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Multi-round conversations of varied lengths, some with a system prompt."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dogs 你好 世界 , . ? \n".split(" ")

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))

    out = []
    for _ in range(count):
        head = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
        out.append(head + _rounds(*[(text(), text()) for _ in range(rng.randint(1, 5))]))
    return out


# one template per way of rendering and labelling (the others differ from these in their strings only)
ONE_PER_RULE = [
    "auto",  # the tokenizer's template, spliced at <|im_start|>
    "qwen2",  # ChatML, an untrained separator
    "qwen",  # LF's: a default system, the whole turn end trained
    "qwen3",  # an empty thought trained before each reply
    "llama2",  # the system inside the first user turn, a bos per turn
    "default",  # eos inside the prompt turns
    "chatglm3",  # efficient eos: eos labelled in place of the next role token
    "chatglm3_thudm",  # the next role token ends a reply, trained as itself
    "empty",
]


@pytest.mark.parametrize("template", ONE_PER_RULE)
@pytest.mark.parametrize("mode", [{}, {"train_on_prompt": True}, {"mask_history": True}])
def test_batched_cutoff_equals_encoding_the_kept_rounds_alone(tokenizer, template, mode):
    # Over-long conversations lose their oldest rounds; with ChatML (qwen2, auto) the shorter variants are
    # spliced from the whole conversation's tokens at <|im_start|> instead of being tokenized again.
    conversations = _conversations(60)
    for cutoff in (40, 90):
        got = encode_conversations(tokenizer, [(m, None) for m in conversations], cutoff, template=template, **mode)
        for messages, encoded in zip(conversations, got):
            alone = encode_conversation(tokenizer, messages, 10**6, template=template, **mode)
            if len(alone.input_ids) <= cutoff:
                assert encoded == alone
                continue
            fitting = [
                v
                for v in (_without_oldest(messages, k) for k in range(1, len(messages)))
                if v is not None
                and len(encode_conversation(tokenizer, v, 10**6, template=template).input_ids) <= cutoff
            ]
            if fitting:
                assert encoded == encode_conversation(tokenizer, fitting[0], 10**6, template=template, **mode)
                if template == "auto":
                    assert (
                        encoded.input_ids
                        == tokenizer.apply_chat_template(fitting[0], tokenize=True, return_dict=True)["input_ids"]
                    )
            else:
                assert len(encoded.input_ids) == cutoff


def _without_oldest(messages: list[dict], rounds: int) -> list[dict] | None:
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head) :]
    return head + body[2 * rounds :] if 2 * rounds < len(body) else None


def test_a_spliced_variant_has_the_tokens_and_labels_of_its_own_tokenization(tokenizer):
    from launcher.data.tokenize import _encode_rendered, _Splicer, _Whole

    messages = [{"role": "system", "content": "Be brief."}] + _rounds(("hello there " * 20, "hi " * 20), ("q", "a"))
    (whole_text, whole_spans), (text, spans) = (
        render(tokenizer, messages, None, "auto"),
        render(tokenizer, messages[:1] + messages[3:], None, "auto"),
    )
    (whole,), (encoding,) = _encode_rendered(tokenizer, [(whole_text, whole_spans)], False)
    (alone,), _ = _encode_rendered(tokenizer, [(text, spans)], False)
    spliced = _Splicer(tokenizer)(_Whole(whole_text, whole.input_ids, encoding), text, spans, False)
    assert spliced is not None and spliced == alone


def test_examples_without_a_trainable_token_are_dropped_and_counted(tokenizer, tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "x " * 300}, {"from": "gpt", "value": "cut off"}]},
        {"conversations": [{"from": "human", "value": "short"}, {"from": "gpt", "value": "kept"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", "formatting": "sharegpt"}}))
    data = build_sft_data(["d"], {**CFG, "dataset_dir": str(tmp_path), "cutoff_len": 64}, tokenizer, "qwen2")
    assert (len(data.examples), data.dropped) == (1, 1)


@pytest.mark.parametrize("template", sorted(TEMPLATES) + ["auto"])
def test_every_sft_demo_dataset_trains_with_every_template(tokenizer, template):
    names = ["demo_sharegpt", "demo_openai", "demo_law_csv"]
    data = build_sft_data(names, CFG, tokenizer, template)
    assert len(data.examples) == 6 and data.dropped == 0


# ---- launch data ----------------------------------------------------------------------------------


def test_launch_data_previews_and_dumps(tmp_path, capsys):
    dump = tmp_path / "dump.jsonl"
    code = main(
        [
            "data",
            str(ROOT / "recipes" / "sft_tiny.yaml"),
            "data.datasets=[demo_sharegpt,demo_law_csv]",
            "model.template=qwen2",
            "--preview",
            "2",
            "--dump",
            str(dump),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("--- example") == 2 and "⟦Paris.<|im_end|>⟧" in out and "labels:    [-100×" in out
    assert "examples: 4   dropped (no trainable token within data.cutoff_len=256): 0   bad rows skipped: 0" in out
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 4
    assert all(
        len(r["input_ids"]) == len(r["labels"]) == len(r["attention_mask"]) == sum(r["attention_mask"]) for r in rows
    )


def test_launch_data_reports_a_bad_row_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"\n')
    assert main(["data", str(ROOT / "recipes" / "sft_tiny.yaml"), f"data.datasets=[{tmp_path / 'bad.jsonl'}]"]) == 2
    assert "bad.jsonl:2 row 1: invalid JSON line" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                str(ROOT / "recipes" / "sft_tiny.yaml"),
                f"data.datasets=[{tmp_path / 'bad.jsonl'}]",
                "data.on_bad_row=skip",
                "--preview",
                "0",
            ]
        )
        == 0
    )
    assert "examples: 1 " in capsys.readouterr().out
