"""`launch serve`: the real server process, talked to with the official `openai` client (streaming and not)
and with raw HTTP for the refusals, the rate limit and the queue bound. Greedy answers are checked against
transformers' own generate over apply_chat_template, with and without the LoRA adapter."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, NamedTuple

import httpx
import pytest
import torch

from tests.conftest import ROOT, free_port, greedy, run_launch

pytestmark = pytest.mark.multiproc

openai = pytest.importorskip("openai")
MESSAGES = [{"role": "user", "content": "Tell me about the weather"}]
TOKENS = 8
MAX_PROMPT = 200  # the served fixture's --max-prompt-tokens


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, warm):
    """A LoRA adapter with random (non-zero) B matrices, so it changes the model's answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from launcher.model.builtin import materialize

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("adapter") / "demo"
    peft.save_pretrained(out)
    return out


class Server(NamedTuple):
    proc: subprocess.Popen
    url: str
    log: IO[str]  # the server's stdout and stderr

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


def _start(*args: str) -> Server:
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a server that logs a lot never blocks on it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "serve",
            "--model",
            "builtin:tiny-qwen2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server exited: {log.read()[-5000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(proc, url, log)
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not answer /health within 180 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(request, adapter) -> Server:
    running = _start(
        "--adapter",
        f"demo={adapter}",
        "--name",
        "tiny",
        "--api-key",
        "k1",
        "--max-tokens",
        "64",
        "--max-body-bytes",
        "4000",
        "--max-prompt-tokens",
        str(MAX_PROMPT),
    )
    request.addfinalizer(lambda: _stop(running.proc))
    return running


@pytest.fixture(scope="module")
def server(served) -> str:
    return served.url


@pytest.fixture(scope="module")
def limited(request, warm):
    keys = [arg for k in ("req", "tok", "q1", "q2", "q3", "q4", "long") for arg in ("--api-key", k)]
    running = _start(*keys, "--rpm", "3", "--tpm", "150", "--max-queue", "1", "--max-tokens", "200")
    request.addfinalizer(lambda: _stop(running.proc))
    return running.url


@pytest.fixture(scope="module")
def misfit(tmp_path_factory, warm):
    """A LoRA adapter on the MLP of a base of another shape (the builtin's config, half its MLP width)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.model.builtin import materialize

    config = AutoConfig.from_pretrained(materialize("builtin:tiny-qwen2"))
    config.intermediate_size //= 2
    peft = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=4, target_modules=["gate_proj"]))
    out = tmp_path_factory.mktemp("misfit") / "narrow"
    peft.save_pretrained(out)
    return out


def _client(url: str, key: str = "k1"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_models_lists_base_and_adapters(server):
    assert [m.id for m in _client(server).models.list().data] == ["tiny", "demo"]


def test_completion_equals_greedy_generate_and_model_picks_the_adapter(server, adapter):
    client = _client(server)
    base = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=TOKENS, temperature=0)
    tuned = client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=TOKENS, temperature=0)
    assert base.choices[0].message.content == greedy(MESSAGES, TOKENS)
    assert tuned.choices[0].message.content == greedy(MESSAGES, TOKENS, adapter)
    assert base.choices[0].message.content != tuned.choices[0].message.content
    assert tuned.usage.completion_tokens <= TOKENS and tuned.usage.prompt_tokens > 0


def test_streaming_equals_non_streaming(server):
    client = _client(server)
    whole = client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=TOKENS, temperature=0)
    chunks = list(
        client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=TOKENS, temperature=0, stream=True)
    )
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_string_cuts_the_answer(server, adapter):
    full = greedy(MESSAGES, 16, adapter)
    stop = full[4:7]
    assert stop.strip(), full
    client = _client(server)
    for stream in (False, True):
        reply = client.chat.completions.create(
            model="demo", messages=MESSAGES, max_tokens=16, temperature=0, stop=[stop], stream=stream
        )
        text = "".join(c.choices[0].delta.content or "" for c in reply) if stream else reply.choices[0].message.content
        assert text == full[: full.index(stop)]


def test_a_client_gone_mid_stream_leaves_the_model_free(server, adapter):
    """Starlette cancels a stream whose client left; the next request must not wait behind it forever."""
    body = {"model": "demo", "messages": MESSAGES, "max_tokens": 64, "min_tokens": 64, "stream": True}
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json=body, timeout=60, headers={"Authorization": "Bearer k1"}
    ) as answer:
        assert answer.status_code == 200
        assert next(answer.iter_lines()).startswith("data: ")  # streaming began; now the client hangs up
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="k1", max_retries=0, timeout=60)
    for _ in range(2):
        reply = client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=TOKENS, temperature=0)
        assert reply.choices[0].message.content == greedy(MESSAGES, TOKENS, adapter)


@pytest.mark.parametrize(
    "headers, body, status, needle",
    [
        ({}, {"model": "tiny", "messages": MESSAGES}, 401, "API key"),
        ({"Authorization": "Bearer nope"}, {"model": "tiny", "messages": MESSAGES}, 401, "API key"),
        (None, "not json", 400, "not JSON"),
        (None, {"model": "tiny"}, 400, "messages"),
        (None, {"model": "other", "messages": MESSAGES}, 404, "/v1/models"),
        (None, {"model": "tiny", "messages": MESSAGES, "max_tokens": 65}, 400, "max_tokens"),
        (None, {"model": "tiny", "messages": MESSAGES, "temperature": 5}, 400, "temperature"),
        (None, {"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}, 413, "limit"),
    ],
)
def test_bad_requests_are_clear_json_errors(server, headers, body, status, needle):
    headers = {"Authorization": "Bearer k1"} if headers is None else headers
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    answer = httpx.post(f"{server}/v1/chat/completions", headers=headers, timeout=60, **kwargs)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]["message"]


def _post(url: str, key: str, **fields) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
        json={"model": "builtin:tiny-qwen2", "messages": MESSAGES, **fields},
    )


def test_rate_limit_requests_and_tokens_per_minute(limited):
    assert [_post(limited, "req", max_tokens=1).status_code for _ in range(3)] == [200] * 3
    refused = _post(limited, "req", max_tokens=1)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "requests" in refused.json()["error"]["message"]
    assert _post(limited, "tok", max_tokens=150, min_tokens=150).status_code == 200  # 150 + prompt > tpm 150
    refused = _post(limited, "tok", max_tokens=1)
    assert refused.status_code == 429 and "tokens" in refused.json()["error"]["message"]


def test_full_queue_answers_503(limited):
    """One generating, one queued (--max-queue 1): of four long requests at once, some are turned away."""
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda k=k: answers.append(_post(limited, k, max_tokens=200, min_tokens=200)))
        for k in ("q1", "q2", "q3", "q4")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    busy = next(a for a in answers if a.status_code == 503)
    assert "busy" in busy.json()["error"]["message"] and busy.headers["Retry-After"]


def test_vllm_engine_prints_command_or_refuses_with_the_fix(adapter):
    printed = run_launch(
        [
            "serve",
            "--model",
            "Qwen/Qwen2-0.5B",
            "--adapter",
            f"demo={adapter}",
            "--engine",
            "vllm",
            "--print",
            "--port",
            "8001",
            "--api-key",
            "s3cret",
        ],
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert "s3cret" not in printed.stdout and printed.stdout.startswith("VLLM_API_KEY=<your key> ")  # not in argv
    assert "vllm serve Qwen/Qwen2-0.5B --host 127.0.0.1 --port 8001" in printed.stdout
    assert f"--enable-lora --max-lora-rank 4 --lora-modules demo={adapter}" in printed.stdout
    vllm = ["serve", "--model", "Qwen/Qwen2-0.5B", "--engine", "vllm", "--print"]
    in_bf16 = run_launch([*vllm, "--dtype", "bf16"], timeout=60)
    assert in_bf16.returncode == 0 and "--dtype bfloat16" in in_bf16.stdout, in_bf16.stderr
    quantized = run_launch([*vllm, "--load-in", "4bit"], timeout=60)
    assert quantized.returncode == 2 and "--quantization" in quantized.stderr
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        refused = run_launch(["serve", "--model", "Qwen/Qwen2-0.5B", "--engine", "vllm"], timeout=60)
        assert refused.returncode == 2 and "pip install vllm" in refused.stderr


def test_load_in_4bit_serves_what_chat_answers_over_the_same_4bit_model():
    """--dtype and --load-in reach the served model: its greedy answer is `launch chat`'s load_for_chat + reply
    over the same 4-bit quantization, and the server says how it loaded the weights."""
    from launcher.infer.chat import Sampling, load_for_chat, reply

    proc, url, _ = _start("--dtype", "fp32", "--load-in", "4bit")
    try:
        served = _client(url).chat.completions.create(
            model="builtin:tiny-qwen2", messages=MESSAGES, max_tokens=TOKENS, temperature=0
        )
    finally:
        _stop(proc)
    model, tokenizer = load_for_chat("builtin:tiny-qwen2", None, dtype="fp32", load_in="4bit")
    assert served.choices[0].message.content == reply(model, tokenizer, MESSAGES, Sampling(TOKENS))
    assert served.choices[0].message.content != greedy(MESSAGES, TOKENS)  # the unquantized model answers otherwise


def test_adapter_without_config_is_refused(tmp_path):
    proc = run_launch(["serve", "--model", "builtin:tiny-qwen2", "--adapter", str(tmp_path)], timeout=60)
    assert proc.returncode == 2 and "adapter_config.json" in proc.stderr and "Traceback" not in proc.stderr


def _prompt_tokens(messages: list[dict]) -> int:
    """The oracle: the prompt's length under the tokenizer's own chat template (what the base model is served with)."""
    from transformers import AutoTokenizer

    from launcher.model.builtin import materialize

    tokenizer = AutoTokenizer.from_pretrained(materialize("builtin:tiny-qwen2"))
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def test_a_prompt_over_the_limit_is_a_400_before_generation(server, limited):
    """--max-prompt-tokens, and without it the model's context (2048 for the builtin): the prompt is refused
    before it reaches the generation queue, with an OpenAI-shaped error naming the lengths."""
    for url, key, name, words, limit in (
        (server, "k1", "tiny", 300, f"this server's --max-prompt-tokens of {MAX_PROMPT}"),
        (limited, "long", "builtin:tiny-qwen2", 3000, "the model's context (max_position_embeddings) of 2048"),
    ):
        messages = [{"role": "user", "content": "x " * words}]
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": name, "messages": messages, "max_tokens": 1},
            timeout=60,
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "messages"
        assert f"the prompt is {_prompt_tokens(messages)} tokens, above {limit}" in error["message"]


def test_a_client_gone_mid_body_leaves_no_traceback(served, adapter):
    """Content-Length promises more than the client sends before it closes: the server logs nothing alarming
    and answers the next request."""
    port = int(served.url.rsplit(":", 1)[1])
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k1\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(head.encode() + b'{"model": "tiny", "messages": [')
        time.sleep(0.5)  # the server is reading the body now
    reply = _client(served.url).chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=TOKENS, temperature=0
    )
    assert reply.choices[0].message.content == greedy(MESSAGES, TOKENS, adapter)
    log = served.output()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]


MISFIT = "model.layers.0.mlp.gate_proj.weight is (352, 128) in the base, the adapter's output side is 176"


def test_a_port_nobody_can_listen_on_and_a_misfit_adapter_are_refused_before_loading(misfit):
    """Exit 2 with the fix, and the model was never loaded (no load line, no weights progress)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [
            (["serve", "--port", "70000"], "--port 70000: not a TCP port. Fix: a port in 1..65535"),
            (["serve", "--port", str(port)], f"--port {port}: cannot listen there (Address already in use). Fix:"),
            (["serve", "--adapter", str(misfit)], MISFIT),
            (["chat", "--adapter", str(misfit), "--prompt", "hi"], MISFIT),
        ]
        for args, needle in cases:
            proc = run_launch([*args, "--model", "builtin:tiny-qwen2"], timeout=120)
            assert proc.returncode == 2, proc.stderr[-3000:]
            assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
            assert "[chat]" not in proc.stderr and "Loading weights" not in proc.stderr
    assert f"adapter {misfit} does not fit the model builtin:tiny-qwen2" in proc.stderr
    assert "Fix: pass the base model the adapter was trained on" in proc.stderr
