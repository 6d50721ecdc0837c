"""`launch chat`: batch prediction from openai/alpaca rows, greedy by default (checked against
transformers' own greedy generate over apply_chat_template), seeded sampling, the interactive
terminal mode, and clear refusals."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Terminal, greedy, run_launch

pytestmark = pytest.mark.multiproc

TOKENS = 6


def test_batch_prediction_from_openai_and_alpaca_rows(tmp_path, warm):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"},
            ]
        },
        {"instruction": "Translate", "input": "good morning", "output": "bonjour"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    proc = run_launch(
        [
            "chat",
            "--model",
            "builtin:tiny-qwen2",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--max-new-tokens",
            str(TOKENS),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["label"] for row in out] == ["Hello!", "bonjour"]
    assert out[0]["prompt"] == rows[0]["messages"][:2]
    assert out[1]["prompt"] == [{"role": "user", "content": "Translate\ngood morning"}]
    assert [row["prediction"] for row in out] == [greedy(row["prompt"], TOKENS) for row in out]


def test_seeded_sampling_repeats_and_differs_from_greedy(warm, capsys):
    from launcher.infer.chat import Sampling, chat

    def answer(sampling: Sampling) -> str:
        chat("builtin:tiny-qwen2", None, ["Tell me a story"], sampling)
        return capsys.readouterr().out

    sampled = Sampling(max_new_tokens=TOKENS, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    first, again = answer(sampled), answer(sampled)
    assert first == again
    assert first != answer(Sampling(max_new_tokens=TOKENS))  # a near-uniform tiny model: sampling shows


def test_a_system_prompt_opens_the_conversation(warm, capsys):
    from launcher.infer.chat import Sampling, chat

    chat("builtin:tiny-qwen2", None, ["Hi there"], Sampling(max_new_tokens=TOKENS), system="Be brief.")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert capsys.readouterr().out == f"user> Hi there\nassistant> {greedy(messages, TOKENS)}\n"


def test_interactive_mode_on_a_terminal(warm):
    terminal = Terminal(["chat", "--model", "builtin:tiny-qwen2", "--max-new-tokens", "4"])
    try:
        terminal.read_until(b"user> ", 1)
        terminal.type("hello")
        terminal.read_until(b"assistant> ", 1)
        terminal.read_until(b"user> ", 2)  # the next turn is offered
        terminal.type("/exit")
        assert terminal.proc.wait(timeout=60) == 0
    finally:
        terminal.close()
    assert b"multi-turn" in terminal.seen


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", "hi", "--temperature", "0.7"], "--temperature only apply when sampling. Fix: add --do-sample"),
        (["--input", "{rows}", "--output", "{out}"], "rows.jsonl:2: expected an openai row"),
        (["--input", "{rows}"], "--input and --output go together"),
        (["--input", "{rows}", "--output", "{out}", "--system", "Be brief."], "--system does not apply to --input"),
    ],
)
def test_bad_chat_input_is_refused_before_loading_the_model(args, message, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "ok"}\n{"question": "no"}\n')
    args = [a.format(rows=rows, out=tmp_path / "out.jsonl") for a in args]
    proc = run_launch(["chat", "--model", "builtin:tiny-qwen2", *args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()
