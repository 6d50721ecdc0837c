"""`launch serve`: an OpenAI-compatible HTTP API over a base model and its LoRA adapters.

POST /v1/chat/completions (non-streaming and SSE streaming), GET /v1/models, GET /health, through
FastAPI + uvicorn, with what a deployment needs in front of a model: API keys, a per-key rate
limit (requests and tokens per minute, 429 + Retry-After), one generation at a time with a
bounded queue (503 when full), request-size and max_tokens limits, and OpenAI-shaped JSON
errors. Model loading and prompt rendering are chat.py's. `--engine vllm` hands the same
model and adapters to `vllm serve` instead (vllm_command).
"""

import asyncio
import json
import math
import shlex
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from launcher.checkpoint.inputs import BaseLoading, base_loading
from launcher.errors import ServeError
from launcher.infer.chat import (
    Sampling,
    attach_adapter,
    chat_template,
    encode_prompt,
    load_for_chat,
    require_adapter_fits,
    stop_ids,
    until_stop,
)
from launcher.infer.vllm_adapter import vllm_adapter_refusal
from launcher.util.net import is_loopback


@dataclass
class Limits:
    max_tokens: int = 512  # largest max_tokens a request may ask for (and the default)
    max_body_bytes: int = 1 << 20
    max_queue: int = 8  # requests waiting while one generates; more are refused with 503
    rpm: int | None = None  # requests per minute per API key
    tpm: int | None = None  # prompt + completion tokens per minute per API key
    max_prompt_tokens: tuple[int, str] | None = None  # (longest prompt, whose limit it is: flag or model context)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`name=path` or `path` (named by its folder) -> {name: path}; each must hold a PEFT adapter."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else (Path(spec).resolve().name, spec)
        if not (Path(path) / "adapter_config.json").is_file():
            raise ServeError(
                f"--adapter {spec}: {path} has no adapter_config.json. "
                "Fix: pass a LoRA run's output.dir or a `launch consolidate` output"
            )
        if name in adapters:
            raise ServeError(f"--adapter {spec}: the name {name!r} is taken. Fix: name it, --adapter NAME=PATH")
        adapters[name] = path
    return adapters


def require_listenable(host: str, port: int) -> None:
    """Refuse, before the model loads, a port no server can listen on: out of range, or taken now."""
    from launcher.util.net import port_taken

    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port}: not a TCP port. Fix: a port in 1..65535, e.g. --port 8000")
    why = port_taken(port, host)
    if why:
        raise ServeError(
            f"--host {host} --port {port}: cannot listen there ({why}). Fix: pick a free port, e.g. "
            f"--port {port % 65535 + 1}, or stop the process holding it (`ss -ltnp 'sport = :{port}'`)"
        )


class RateLimit:
    """Sliding one-minute windows per API key: [arrival time, tokens] of each admitted request."""

    def __init__(self, rpm: int | None, tpm: int | None, window: float = 60.0):
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self.events: dict[str, deque] = {}

    def admit(self, key: str) -> list:
        now = time.monotonic()
        events = self.events.setdefault(key, deque())
        while events and now - events[0][0] >= self.window:
            events.popleft()
        for limit, used, what in ((self.rpm, len(events), "requests"), (self.tpm, sum(e[1] for e in events), "tokens")):
            if limit is not None and used >= limit:
                retry = max(1, math.ceil(self.window - (now - events[0][0])))
                raise ApiError(
                    429,
                    f"rate limit: {used} {what} in the last minute for this API key (limit {limit}); "
                    f"retry in {retry} s",
                    "rate_limit_error",
                    headers={"Retry-After": str(retry)},
                )
        event = [now, 0]
        events.append(event)
        return event  # the caller adds the tokens once they are known


class Gate:
    """One generation at a time; at most max_queue requests wait for it."""

    def __init__(self, max_queue: int):
        self.max_queue, self.waiting, self.lock = max_queue, 0, asyncio.Lock()

    async def enter(self) -> None:
        if self.lock.locked() and self.waiting >= self.max_queue:
            raise ApiError(
                503,
                f"server busy: {self.waiting} requests already queued (limit {self.max_queue}); retry later",
                "server_busy",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        self.lock.release()


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    max_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    min_tokens: int = 0  # vLLM's extension: no EOS before this many tokens


def _field(body: dict, name: str, kinds: tuple, default=None, check=None, need: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds or (check and not check(value)):
        raise ApiError(400, f"{name} = {value!r}: must be {need}", param=name)
    return value


def parse_request(raw: bytes, limits: Limits, names: list[str]) -> ChatRequest:
    """The request body checked field by field; any problem is a 400 naming the field."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not JSON ({err})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = _field(body, "model", (str,), need="a string")
    if model is None:
        raise ApiError(400, f"model is required: one of {names}", param="model")
    if model not in names:
        raise ApiError(
            404, f"model {model!r} is not served here; GET /v1/models lists {names}", "not_found_error", "model"
        )
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise ApiError(
            400, "messages must be a non-empty list of {role: system|user|assistant, content: string}", param="messages"
        )
    max_tokens = _field(body, "max_completion_tokens", (int,), None, lambda v: v >= 1, "an integer >= 1")
    max_tokens = (
        _field(body, "max_tokens", (int,), max_tokens, lambda v: v >= 1, "an integer >= 1") or limits.max_tokens
    )
    if max_tokens > limits.max_tokens:
        raise ApiError(
            400, f"max_tokens = {max_tokens} is above this server's limit {limits.max_tokens}", param="max_tokens"
        )
    temperature = _field(body, "temperature", (int, float), None, lambda v: 0 <= v <= 2, "a number in [0, 2]")
    top_p = _field(body, "top_p", (int, float), None, lambda v: 0 < v <= 1, "a number in (0, 1]")
    min_tokens = _field(body, "min_tokens", (int,), 0, lambda v: 0 <= v <= max_tokens, "an integer in [0, max_tokens]")
    if _field(body, "n", (int,), 1, need="an integer") != 1:
        raise ApiError(400, "n: only 1 choice per request is supported", param="n")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a string or a list of at most 4 non-empty strings", param="stop")
    sample = temperature is not None and temperature > 0  # temperature 0 or none given: greedy, reproducible
    sampling = Sampling(max_tokens, sample, temperature if sample else None, top_p if sample else None)
    return ChatRequest(model, messages, max_tokens, sampling, stop, bool(body.get("stream", False)), min_tokens)


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    hits = [text.find(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def served_base(adapters: dict[str, str]) -> BaseLoading:
    """How the one base under all `adapters` loads: the RoPE scaling their runs trained under (base_loading),
    which must be the same for every adapter; the base as saved without adapters."""
    loadings = {name: base_loading(path) for name, path in adapters.items()}
    scalings = {json.dumps(b.rope_scaling, sort_keys=True): name for name, b in loadings.items()}
    if len(scalings) > 1:
        shown = ", ".join(f"{name}: {scaling}" for scaling, name in scalings.items())
        raise ServeError(
            f"--adapter: the adapters' runs trained under different RoPE scaling (model.rope_scaling: {shown}), "
            "and one base model loads with one. Fix: serve them from separate `launch serve` processes"
        )
    return next(iter(loadings.values()), BaseLoading())


class Engine:
    """The model, its adapters and generation; each call runs in a worker thread under the Gate."""

    def __init__(
        self,
        model_path: str,
        adapters: dict[str, str],
        base_name: str,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        load_in: str | None = None,
    ):
        for path in adapters.values():  # before the base loads: it may take minutes
            require_adapter_fits(model_path, path)
        base = served_base(adapters)
        model, self.tokenizer = load_for_chat(model_path, None, trust_remote_code, dtype, load_in, base)
        for name, path in adapters.items():
            model = attach_adapter(model, path, model_path, name)
        model.eval()
        self.model, self.adapters, self.base_name = model, adapters, base_name
        # each served model renders prompts as its run trained (chat.chat_template): the base's, each adapter's
        self.templates = {
            base_name: chat_template(model_path, None)[0],
            **{name: chat_template(model_path, path)[0] for name, path in adapters.items()},
        }

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    def _kwargs(self, request: ChatRequest) -> dict:
        kwargs = {
            **request.sampling.generate_kwargs(),
            "eos_token_id": stop_ids(self.tokenizer, self.templates[request.model]),
            "pad_token_id": self.tokenizer.pad_token_id,
            "min_new_tokens": request.min_tokens,
        }
        if request.stop:
            kwargs.update(stop_strings=request.stop, tokenizer=self.tokenizer)
        return kwargs

    def prompt_limit(self, requested: int | None) -> tuple[int, str] | None:
        """The longest prompt a request may send and whose limit it is: --max-prompt-tokens, never above the
        model's context (max_position_embeddings)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if requested is not None and (context is None or requested <= context):
            return requested, "this server's --max-prompt-tokens"
        return (context, "the model's context (max_position_embeddings)") if context else None

    def encode(self, request: ChatRequest, limit: tuple[int, str] | None):
        """The request's prompt, tokenized as its model trained; one longer than `limit` is a 400, before it
        can hold the generation slot."""
        inputs = encode_prompt(self.tokenizer, request.messages, self.templates[request.model])
        length = inputs["input_ids"].shape[1]
        if limit is not None and length > limit[0]:
            raise ApiError(
                400,
                f"the prompt is {length} tokens, above {limit[1]} of {limit[0]}. Fix: shorten the messages",
                param="messages",
            )
        return inputs

    def generate(self, request: ChatRequest, inputs, streamer=None) -> tuple[list[int], int]:
        """(completion token ids, prompt tokens) for the encoded prompt `inputs`; tokens go to `streamer` as they
        come when one is given."""
        import contextlib

        import torch

        inputs = inputs.to(self.model.device)
        if request.model in self.adapters:
            self.model.set_adapter(request.model)
            context = contextlib.nullcontext()
        else:
            context = self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        with torch.no_grad(), context:
            output = self.model.generate(**inputs, **self._kwargs(request), streamer=streamer)
        prompt = inputs["input_ids"].shape[1]
        return output[0, prompt:].tolist(), prompt

    def finish(self, ids: list[int], request: ChatRequest) -> tuple[str, str]:
        """(text cut at a stop string, finish_reason)."""
        ids, at_stop_token = until_stop(ids, stop_ids(self.tokenizer, self.templates[request.model]))
        text, stopped = _cut(self.tokenizer.decode(ids, skip_special_tokens=True), request.stop)
        ended = stopped or at_stop_token or len(ids) < request.max_tokens
        return text, "stop" if ended else "length"


def _error(err: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.status}},
        status_code=err.status,
        headers=err.headers,
    )


def build_app(engine: Engine, limits: Limits, api_keys: set[str]):
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from starlette.requests import ClientDisconnect

    app = FastAPI(title="llm-launcher serve")
    rate, gate = RateLimit(limits.rpm, limits.tpm), Gate(limits.max_queue)

    def authorize(request: Request) -> str:
        if not api_keys:
            return ""
        header = request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ").strip()
        if not header.startswith("Bearer ") or key not in api_keys:
            raise ApiError(401, "missing or unknown API key: send Authorization: Bearer <key>", "authentication_error")
        return key

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"request body of {declared} bytes is above the limit {limits.max_body_bytes}")
        body = b""
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    raise ApiError(413, f"request body is above the limit {limits.max_body_bytes} bytes")
        except ClientDisconnect:  # it left mid-body: nobody to answer, nothing to log
            raise ApiError(400, "the client closed the connection before sending the whole body") from None
        return body

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return _error(err)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": engine.names, "queued": gate.waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "llm-launcher",
                    **({"parent": engine.base_name} if name in engine.adapters else {}),
                }
                for name in engine.names
            ],
        }

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        key = authorize(request)
        chat = parse_request(await read_body(request), limits, engine.names)
        inputs = engine.encode(chat, limits.max_prompt_tokens)
        event = rate.admit(key)
        await gate.enter()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": chat.model}
        if chat.stream:
            from transformers import TextIteratorStreamer

            streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
            generation = _generate(engine, chat, inputs, gate, streamer)
            return StreamingResponse(
                _stream(engine, chat, head, event, generation, streamer), media_type="text/event-stream"
            )
        ids, prompt = await asyncio.shield(_generate(engine, chat, inputs, gate))
        event[1] = prompt + len(ids)
        text, reason = engine.finish(ids, chat)
        return {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(ids), "total_tokens": prompt + len(ids)},
        }

    return app


def _generate(engine: Engine, chat: ChatRequest, inputs, gate: Gate, streamer=None) -> asyncio.Future:
    """engine.generate in a worker thread that holds the gate until generate returns.

    The gate is released by the thread's end, not by the request's code: a client that goes away
    cancels the request's awaits (Starlette cancels a streaming response on disconnect, and cancels
    every await in its finally too), and a release there would be skipped, or come while the model
    still generates. Callers await the future through asyncio.shield for the same reason."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, engine.generate, chat, inputs, streamer)

    def done(finished: asyncio.Future) -> None:
        gate.leave()
        if streamer is not None and finished.exception() is not None:  # generate never ended the stream
            streamer.text_queue.put(streamer.stop_signal)

    future.add_done_callback(done)
    return future


async def _stream(engine: Engine, chat: ChatRequest, head: dict, event: list, generation: asyncio.Future, streamer):
    """SSE chunks as tokens arrive; text that might start a stop string is held back until it cannot."""

    def chunk(delta: dict, reason: str | None = None) -> str:
        body = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    hold = max((len(s) for s in chat.stop), default=1) - 1
    yield chunk({"role": "assistant", "content": ""})
    text, sent = "", 0
    while (piece := await asyncio.to_thread(next, streamer, None)) is not None:
        text += piece
        cut, stopped = _cut(text, chat.stop)
        safe = len(cut) if stopped else max(sent, len(text) - hold)
        if safe > sent:
            yield chunk({"content": text[sent:safe]})
            sent = safe
        if stopped:
            break
    ids, prompt = await asyncio.shield(generation)
    event[1] = prompt + len(ids)
    final, reason = engine.finish(ids, chat)
    if len(final) > sent:
        yield chunk({"content": final[sent:]})
    yield chunk({}, reason)
    yield "data: [DONE]\n\n"


VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype auto: vLLM's own default


def vllm_command(
    model: str, adapters: dict[str, str], host: str, port: int, base_name: str, dtype: str = "auto"
) -> list[str]:
    """The `vllm serve` argv serving the same model and adapters behind the same OpenAI API; an adapter vLLM
    cannot take (vllm_adapter_refusal) is refused."""
    for name, path in adapters.items():
        refusal = vllm_adapter_refusal(path, "--engine hf (the default)")
        if refusal:
            raise ServeError(f"--engine vllm: --adapter {name}: {refusal}")
    argv = ["vllm", "serve", model, "--host", host, "--port", str(port), "--served-model-name", base_name]
    if dtype != "auto":
        argv += ["--dtype", VLLM_DTYPES[dtype]]
    if adapters:
        ranks = [json.loads((Path(p) / "adapter_config.json").read_text()).get("r", 8) for p in adapters.values()]
        argv += [
            "--enable-lora",
            "--max-lora-rank",
            str(max(ranks)),
            "--lora-modules",
            *[f"{name}={path}" for name, path in adapters.items()],
        ]
    return argv


def run_vllm(argv: list[str], api_keys: list[str], print_only: bool) -> int:
    """Print the command (--print), or replace this process with it; the API key goes in VLLM_API_KEY, not argv
    (which any user of the machine can read)."""
    import importlib.util
    import os
    import shutil

    env_prefix = "VLLM_API_KEY=<your key> " if api_keys else ""
    if print_only:
        print(env_prefix + shlex.join(argv), flush=True)
        return 0
    if shutil.which("vllm") is None or importlib.util.find_spec("vllm") is None:
        raise ServeError(
            "--engine vllm: vLLM is not installed here. Fix: `pip install vllm` on a machine with a "
            "CUDA GPU, or serve with the default --engine hf (this process)"
        )
    print(f"[serve] {env_prefix}{shlex.join(argv)}", flush=True)
    env = {**os.environ, **({"VLLM_API_KEY": api_keys[0]} if api_keys else {})}  # vllm serve takes one key
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def serve(engine: Engine, limits: Limits, api_keys: set[str], host: str, port: int) -> None:
    import uvicorn

    if not api_keys and not is_loopback(host):
        print(
            f"[serve] warning: no API key and listening on {host}: anyone who reaches it can use the model. "
            "Set --api-key or LAUNCH_API_KEYS",
            flush=True,
        )
    print(
        f"[serve] {', '.join(engine.names)} on http://{host}:{port}/v1 (queue {limits.max_queue}, "
        f"max_tokens {limits.max_tokens}, prompt tokens {limits.max_prompt_tokens and limits.max_prompt_tokens[0]}, "
        f"rpm {limits.rpm}, tpm {limits.tpm})",
        flush=True,
    )
    uvicorn.run(build_app(engine, limits, api_keys), host=host, port=port, log_level="warning")
