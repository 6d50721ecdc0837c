"""`launch chat` on a run's output renders prompts as that run's training did: the template recorded in
its plan.json, not the tokenizer's own (the oracle: the data pipeline's prompt ids for the same messages,
launcher.data.pairs.split_reply). A plain model folder keeps its tokenizer's template, --template
overrides; interactive mode streams the reply; --load-in 4bit/8bit really quantizes (bitsandbytes on
CPU); an adapter folder without adapter_config.json is refused with merge's own message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FULL_ZERO2_RUN, LORA_ZERO3_RUN, Terminal, greedy_ids, run_launch

pytestmark = pytest.mark.multiproc

TOKENS = 8
PROMPT = "What is the capital of France?"


def trained_prompt_ids(run: Path, messages: list[dict], template: str) -> list[int]:
    """The oracle: the prompt ids training tokenized before the reply to `messages` (any reply: it is cut off)."""
    from transformers import AutoTokenizer

    from launcher.data.pairs import split_reply

    tokenizer = AutoTokenizer.from_pretrained(run)
    return split_reply(tokenizer, [*messages, {"role": "assistant", "content": "Paris."}], None, template)[0]


@pytest.fixture(scope="module")
def alpaca_run(tiny_run) -> Path:
    """A full fine-tuning run trained with template alpaca; the tokenizer's own template is ChatML."""
    return tiny_run(*FULL_ZERO2_RUN)


def test_a_runs_recorded_template_renders_the_training_prompt(alpaca_run, tiny_run, warm):
    from transformers import AutoTokenizer

    from launcher.infer.chat import chat_template, encode_prompt
    from launcher.model.builtin import materialize

    messages = [{"role": "user", "content": PROMPT}]
    template, source = chat_template(str(alpaca_run), None)
    assert template == "alpaca" and "plan.json" in source
    assert chat_template(str(alpaca_run / "checkpoint-6"), None)[0] == "alpaca"  # a checkpoint: its run's plan.json
    tokenizer = AutoTokenizer.from_pretrained(alpaca_run)
    chat_ids = encode_prompt(tokenizer, messages, template)["input_ids"][0].tolist()
    assert chat_ids == trained_prompt_ids(alpaca_run, messages, "alpaca")
    own = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert chat_ids != own  # the difference matters: the tokenizer's template is not what the model saw
    # an adapter's run that trained with auto, and a plain model folder: the tokenizer's own
    assert chat_template("builtin:tiny-qwen2", str(tiny_run(*LORA_ZERO3_RUN)))[0] == "auto"
    assert chat_template(str(materialize("builtin:tiny-qwen2")), None) == ("auto", "the tokenizer's chat template")
    assert chat_template(str(alpaca_run), None, "qwen")[0] == "qwen"  # --template overrides; LF's qwen is a template


def test_cli_chat_answers_from_the_training_prompt_and_template_overrides(alpaca_run):
    messages = [{"role": "user", "content": PROMPT}]
    proc = run_launch(
        ["chat", "--model", str(alpaca_run), "--prompt", PROMPT, "--max-new-tokens", str(TOKENS)], timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "template alpaca (the run's plan.json" in proc.stderr
    expected = greedy_ids(trained_prompt_ids(alpaca_run, messages, "alpaca"), TOKENS, alpaca_run)
    assert proc.stdout.split("assistant> ", 1)[1] == expected + "\n"

    proc = run_launch(
        ["chat", "--model", str(alpaca_run), "--template", "auto", "--prompt", PROMPT, "--max-new-tokens", str(TOKENS)],
        timeout=300,
    )
    assert proc.returncode == 0 and "template auto (--template)" in proc.stderr, proc.stderr[-3000:]
    expected = greedy_ids(trained_prompt_ids(alpaca_run, messages, "auto"), TOKENS, alpaca_run)
    assert proc.stdout.split("assistant> ", 1)[1] == expected + "\n"

    proc = run_launch(["chat", "--model", str(alpaca_run), "--template", "vicuna", "--prompt", "hi"], timeout=300)
    assert proc.returncode == 2 and "--template vicuna: not a registered template" in proc.stderr
    assert "alpaca" in proc.stderr and "Traceback" not in proc.stderr


def test_interactive_mode_streams_each_reply_of_a_conversation(alpaca_run):
    """Two turns through a real terminal: each reply is the oracle's greedy answer to the training-time
    rendering of the whole conversation so far."""
    terminal = Terminal(["chat", "--model", str(alpaca_run), "--max-new-tokens", str(TOKENS)])
    history: list[dict] = []
    try:
        for turn, text in enumerate((PROMPT, "And of Spain?"), start=1):
            terminal.read_until(b"user> ", turn)
            terminal.type(text)
            terminal.read_until(b"user> ", turn + 1)  # the reply has arrived and the next turn is offered
            history.append({"role": "user", "content": text})
            expected = greedy_ids(trained_prompt_ids(alpaca_run, history, "alpaca"), TOKENS, alpaca_run)
            reply = terminal.seen.decode().replace("\r\n", "\n").split("assistant> ")[turn].split("\nuser> ")[0]
            assert reply == expected
            history.append({"role": "assistant", "content": reply})
        terminal.type("/exit")
        assert terminal.proc.wait(timeout=60) == 0
    finally:
        terminal.close()


def test_load_in_4bit_and_8bit_quantize_and_generate_on_cpu(tiny_run):
    import bitsandbytes as bnb

    from launcher.infer.chat import Sampling, load_for_chat, reply

    for load_in, layer in (("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)):
        model, tokenizer = load_for_chat("builtin:tiny-qwen2", str(tiny_run(*LORA_ZERO3_RUN)), load_in=load_in)
        base = model.get_base_model()
        assert isinstance(base.model.layers[0].mlp.down_proj.base_layer, layer)  # LoRA over the quantized layer
        ids = tokenizer(
            reply(model, tokenizer, [{"role": "user", "content": "hi"}], Sampling(4)), add_special_tokens=False
        )["input_ids"]
        assert ids  # it generated
    proc = run_launch(
        ["chat", "--model", "builtin:tiny-qwen2", "--load-in", "4bit", "--prompt", "hi", "--max-new-tokens", "4"],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "linear layers 4bit on cpu" in proc.stderr and proc.stdout.splitlines()[1].startswith("assistant> ")


def test_an_adapter_folder_without_adapter_config_is_refused_as_merge_refuses_it(alpaca_run, tmp_path):
    """A full run's output.dir passed as --adapter (it is a model, not an adapter)."""
    merge = run_launch(
        ["merge", "--base", "builtin:tiny-qwen2", "--adapter", str(alpaca_run), "--out", str(tmp_path / "merged")],
        timeout=300,
    )
    chat = run_launch(
        ["chat", "--model", "builtin:tiny-qwen2", "--adapter", str(alpaca_run), "--prompt", "hi"], timeout=300
    )
    assert merge.returncode == chat.returncode == 2
    merge_error = [line for line in merge.stderr.splitlines() if "error:" in line]
    chat_error = [line for line in chat.stderr.splitlines() if "error:" in line]
    assert len(merge_error) == len(chat_error) == 1 and "has no adapter_config.json" in chat_error[0]
    assert chat_error[0].removeprefix("launch chat: ") == merge_error[0].removeprefix("launch merge: ")
    assert "Traceback" not in chat.stderr and not (tmp_path / "merged").exists()
