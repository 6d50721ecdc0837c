"""`launch chat`: generation with a base model and an optional PEFT adapter, through the chat template
the run trained with (a run's output.dir records it in plan.json; a plain model folder: its tokenizer's
own; --template overrides). One-shot (--prompt, the reply streamed), batch prediction (--input rows.jsonl --output
preds.jsonl), interactive (a terminal on stdin, the reply streamed as it is generated), or one prompt per
stdin line (a pipe); --system's message opens each conversation. Greedy by default; --do-sample with
--temperature / --top-p / --top-k / --seed samples. On the GPU when there is one, optionally 4/8-bit (bitsandbytes)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.checkpoint.adapter_fit import adapter_fit_error
from launcher.checkpoint.inputs import BaseLoading, base_loading, read_json, run_plan, safetensors_files
from launcher.compat import bnb_cpu_kernel_where_it_fits, prompt_learning_generates_with_its_cache
from launcher.data.defaults import TEMPLATE
from launcher.data.templates import TEMPLATES
from launcher.errors import ChatError, CheckpointError
from launcher.model.dtypes import torch_dtype


@dataclass
class Sampling:
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self):
        given = [
            flag
            for flag, value in (("--temperature", self.temperature), ("--top-p", self.top_p), ("--top-k", self.top_k))
            if value is not None
        ]
        if given and not self.do_sample:
            raise ChatError(
                f"{', '.join(given)} only apply when sampling. Fix: add --do-sample (greedy is the default)"
            )

    def generate_kwargs(self) -> dict:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(
                {
                    k: v
                    for k, v in (("temperature", self.temperature), ("top_p", self.top_p), ("top_k", self.top_k))
                    if v is not None
                }
            )
        return kwargs


DTYPES = ("auto", "bf16", "fp16", "fp32")
LOAD_IN = ("4bit", "8bit")


def chat_dtype(requested: str, adapter: str | None, on_gpu: bool) -> str:
    """--dtype: auto = the dtype the adapter's run trained in (its plan.json), else bf16 on a GPU, fp32 on CPU."""
    if requested not in DTYPES:
        raise ChatError(f"--dtype {requested}: not one of {', '.join(DTYPES)}")
    if requested == "fp16" and not on_gpu:
        raise ChatError("--dtype fp16 needs a CUDA GPU and none is visible. Fix: --dtype bf16 or fp32 on CPU")
    if requested != "auto":
        return requested
    plan = run_plan(adapter) if adapter else None
    trained = plan.get("dtype") if plan else None
    if trained in DTYPES[1:] and (on_gpu or trained != "fp16"):
        return trained
    return "bf16" if on_gpu else "fp32"


def chat_template(model_path: str, adapter: str | None, requested: str | None = None) -> tuple[str, str]:
    """(template name, where it comes from): --template; else the one the run that wrote the adapter, or the
    model folder, trained with (its plan.json; `auto` there is that run's tokenizer's, saved beside it); else
    auto, the tokenizer's own chat template."""
    if requested is not None:
        if requested != "auto" and requested not in TEMPLATES:
            raise ChatError(
                f"--template {requested}: not a registered template. Fix: one of auto, {', '.join(TEMPLATES)}"
            )
        return requested, "--template"
    for folder in (adapter, model_path):
        plan = run_plan(folder) if folder else None
        if plan is not None:
            return plan["recipe"]["model"]["template"], f"the run's plan.json in {folder}"
    return "auto", "the tokenizer's chat template"


def prompt_text(tokenizer, messages: list[dict], template: str = TEMPLATE) -> str:
    """`messages` rendered for the assistant's next turn as training rendered them (launcher.data): the
    registered template's text up to its generation prompt, or the tokenizer's template (auto)."""
    if template == "auto":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return TEMPLATES[template].render(messages, None, tokenizer.eos_token or "", tokenizer.bos_token or "")[0]


def _quantization(load_in: str | None, compute_dtype):
    """bitsandbytes' config for --load-in 4bit (NF4, computing in the chat dtype) or 8bit (LLM.int8)."""
    if load_in is None:
        return None
    if load_in not in LOAD_IN:
        raise ChatError(f"--load-in {load_in}: not one of {', '.join(LOAD_IN)}")
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def require_adapter_fits(model_path: str, adapter: str) -> None:
    """Refuse, before the base is loaded, an adapter trained on a base of another shape (damaged files too)."""
    refusal = adapter_fit_error(model_path, adapter)
    if refusal:
        raise CheckpointError(refusal)


def attach_adapter(model, adapter: str, model_path: str, name: str = "default"):
    """`model` with the PEFT adapter loaded as `name` (the first makes it a PeftModel). Shapes that
    require_adapter_fits could not check (a hub base) are refused here, as PEFT's load_state_dict finds them."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(adapter, adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, adapter, adapter_name=name)
        prompt_learning_generates_with_its_cache(model)  # a prefix adapter's key/values reach generate
        return model
    except RuntimeError as err:  # load_state_dict: the adapter's shapes are another model's
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise CheckpointError(
            f"adapter {adapter} does not fit the model {model_path}: {detail.rstrip('.')}. "
            "Fix: pass the base model the adapter was trained on"
        ) from None


def load_for_chat(
    model_path: str,
    adapter: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    load_in: str | None = None,
    base: BaseLoading | None = None,
):
    """(model, tokenizer) on the GPU when there is one, in eval mode, in `dtype` (chat_dtype), its linear layers
    quantized when `load_in` is 4bit/8bit, the base loaded as `base` says (default: as the adapter's run loaded it,
    its RoPE scaling); the adapter is loaded with PEFT. Damaged or missing adapter and model files are refused
    (CheckpointError) before anything loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.model.builtin import local_model_path
    from launcher.model.rope import rope_scaled_config

    if adapter:
        require_adapter_fits(model_path, adapter)
    model_dir = local_model_path(model_path)
    if Path(model_dir).is_dir():
        read_json(Path(model_dir) / "config.json")
        safetensors_files(Path(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(adapter or model_dir, trust_remote_code=trust_remote_code)
    on_gpu = torch.cuda.is_available()
    dtype = chat_dtype(dtype, adapter, on_gpu)
    weights = torch_dtype(dtype)
    rope = (base or base_loading(adapter)).rope_scaling
    scaled = {"config": rope_scaled_config(model_dir, rope, trust_remote_code)} if rope else {}
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=weights,
        trust_remote_code=trust_remote_code,
        device_map="cuda" if on_gpu else None,
        quantization_config=_quantization(load_in, weights),
        **scaled,
    )  # straight onto the GPU, no CPU copy first
    if load_in == "4bit":
        bnb_cpu_kernel_where_it_fits(model)
    if adapter:
        model = attach_adapter(model, adapter, model_path)
    details = f", linear layers {load_in}" if load_in else ""
    details += f", RoPE {rope['rope_type']} x{rope['factor']} as trained" if rope else ""
    print(
        f"[chat] {model_path}{' + ' + str(adapter) if adapter else ''} in {dtype}{details} on {model.device}",
        file=sys.stderr,
        flush=True,
    )
    return model.eval(), tokenizer


def stop_ids(tokenizer, template: str = TEMPLATE) -> list[int]:
    """The token ids that end a reply: the tokenizer's eos and, for a registered template, its end-of-turn markers
    that are one token of this vocabulary (gemma's <end_of_turn> where a base model's eos is another token, as LF
    stops at its stop words)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    markers = () if template == "auto" else TEMPLATES[template].stop_markers
    for marker in markers:
        encoded = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


def until_stop(ids: list[int], stops: list[int]) -> tuple[list[int], bool]:
    """(the reply's ids before its first stop token, whether one ended it)."""
    end = next((i for i, token in enumerate(ids) if token in stops), None)
    return (ids, False) if end is None else (ids[:end], True)


def encode_prompt(tokenizer, messages: list[dict], template: str = TEMPLATE):
    """input_ids/attention_mask of `messages` rendered with `template` (prompt_text), ready for the assistant's turn."""
    return tokenizer(prompt_text(tokenizer, messages, template), return_tensors="pt", add_special_tokens=False)


class ReplyPrinter:
    """A generate() streamer that prints the reply to stdout token by token, as the reply's final text will read
    (the same decoding, the stop token left out; half a character waits for its other bytes); end() ends the line.
    Token by token, not word by word: a reader of the stream (`launch ui`) sees it grow."""

    def __init__(self, tokenizer, stops: list[int]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.shown = 0  # characters of the text printed so far
        self.prompt = True  # generate() puts the prompt first

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def put(self, value) -> None:
        if self.prompt:
            self.prompt = False
            return
        self.ids += [token for token in value.flatten().tolist() if token not in self.stops]
        text = self._text()
        if not text.endswith("\ufffd"):
            print(text[self.shown :], end="", flush=True)
            self.shown = len(text)

    def end(self) -> None:
        print(self._text()[self.shown :], flush=True)


def reply(
    model, tokenizer, messages: list[dict], sampling: Sampling, template: str = TEMPLATE, stream: bool = False
) -> str:
    """The assistant's next turn after `messages`, rendered with `template`; with `stream`, also printed to stdout
    as it is generated."""
    import torch

    inputs = encode_prompt(tokenizer, messages, template).to(model.device)
    stops = stop_ids(tokenizer, template)
    streamer = ReplyPrinter(tokenizer, stops) if stream else None
    with torch.no_grad():
        output = model.generate(
            **inputs,
            **sampling.generate_kwargs(),
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
        )
    ids, _ = until_stop(output[0, inputs["input_ids"].shape[1] :].tolist(), stops)
    return tokenizer.decode(ids, skip_special_tokens=True)


def reply_batch(
    model, tokenizer, conversations: list[list[dict]], sampling: Sampling, batch_size: int = 8, template: str = TEMPLATE
) -> tuple[list[str], int]:
    """The assistant's next turn for each conversation, `batch_size` at a time (left-padded), and the number of
    tokens generated (through each reply's end: eos or the template's end-of-turn token)."""
    import torch

    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    texts = [prompt_text(tokenizer, m, template) for m in conversations]
    stops = stop_ids(tokenizer, template)
    replies, generated = [], 0
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                **sampling.generate_kwargs(),
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            ids, stopped = until_stop(row, stops)
            generated += len(ids) + stopped
            replies.append(tokenizer.decode(ids, skip_special_tokens=True))
    return replies, generated


@dataclass
class Request:
    """One row of a batch file: the conversation to continue and, if the row had one, the reference answer."""

    messages: list[dict]
    label: str | None = None


def parse_row(row: object, where: str) -> Request:
    """An openai row ({"messages": [...]}, a final assistant turn is the label) or an alpaca row
    (instruction, input, optional system; output is the label)."""
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        messages = row["messages"]
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ChatError(f"{where}: every message needs a role and a content")
        if messages[-1]["role"] == "assistant":
            return Request(messages[:-1], messages[-1]["content"])
        return Request(messages)
    if isinstance(row, dict) and isinstance(row.get("instruction"), str):
        user = f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]
        system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return Request(system + [{"role": "user", "content": user}], row.get("output"))
    raise ChatError(
        f'{where}: expected an openai row {{"messages": [...]}} or an alpaca row '
        '{"instruction": ..., "input": ..., "output": ...}'
    )


def read_requests(path: Path) -> list[Request]:
    requests = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ChatError(f"{path}:{number}: not JSON ({err.msg})") from None
        requests.append(parse_row(row, f"{path}:{number}"))
    if not requests:
        raise ChatError(f"{path} holds no rows")
    return requests


def predict_file(model, tokenizer, requests: list[Request], target: Path, sampling: Sampling, template: str) -> None:
    """Write one {"prompt", "prediction", "label"} row per request, in order."""
    with open(target, "w", encoding="utf-8") as out:
        for request in requests:
            row = {
                "prompt": request.messages,
                "prediction": reply(model, tokenizer, request.messages, sampling, template),
                "label": request.label,
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def interactive(model, tokenizer, sampling: Sampling, template: str, opening: list[dict]) -> None:
    """A multi-turn conversation on the terminal after `opening` (the system message, if any), each reply streamed
    as it is generated; /clear starts over, /exit or Ctrl-D leaves."""
    print("[chat] multi-turn; /clear starts a new conversation, /exit or Ctrl-D leaves", flush=True)
    history = list(opening)
    while True:
        try:
            print("user> ", end="", flush=True)  # on stdout: input()'s own prompt may go to stderr
            line = input().strip()
        except EOFError:
            print()
            return
        if line == "/exit":
            return
        if line == "/clear":
            history = list(opening)
            continue
        if line:
            history.append({"role": "user", "content": line})
            print("assistant> ", end="", flush=True)
            answer = reply(model, tokenizer, history, sampling, template, stream=True)  # the streamer ends the line
            history.append({"role": "assistant", "content": answer})


def chat(
    model_path: str,
    adapter: str | None,
    prompts: list[str],
    sampling: Sampling,
    trust_remote_code: bool = False,
    input_file: str | None = None,
    output_file: str | None = None,
    dtype: str = "auto",
    template: str | None = None,
    load_in: str | None = None,
    system: str | None = None,
) -> None:
    """Answer --prompt messages, a batch file, a terminal conversation, or one prompt per stdin line; `system`
    opens each conversation but the batch file's (its rows carry their own)."""
    if (input_file is None) != (output_file is None):
        raise ChatError("--input and --output go together: rows in, predictions out")
    if system and input_file:
        raise ChatError("--system does not apply to --input rows (each row has its own system field). Fix: drop one")
    opening = [{"role": "system", "content": system}] if system else []
    requests = read_requests(Path(input_file)) if input_file else None  # bad rows refused before loading the model
    template, source = chat_template(model_path, adapter, template)
    model, tokenizer = load_for_chat(model_path, adapter, trust_remote_code, dtype, load_in)
    if template == "auto" and not tokenizer.chat_template:
        raise ChatError(
            f"{adapter or model_path}: its tokenizer has no chat template (a base model). "
            f"Fix: --template one of {', '.join(TEMPLATES)}"
        )
    print(f"[chat] template {template} ({source})", file=sys.stderr, flush=True)
    if sampling.seed is not None:
        from transformers import set_seed

        set_seed(sampling.seed)
    if requests is not None and output_file is not None:  # given together (checked above)
        predict_file(model, tokenizer, requests, Path(output_file), sampling, template)
        print(f"[chat] {len(requests)} predictions -> {output_file}", flush=True)
    elif prompts:
        for prompt in prompts:  # each reply streamed as it is generated (`launch ui` relays it)
            print(f"user> {prompt}\nassistant> ", end="", flush=True)
            reply(model, tokenizer, [*opening, {"role": "user", "content": prompt}], sampling, template, stream=True)
    elif sys.stdin.isatty():
        interactive(model, tokenizer, sampling, template, opening)
    else:
        for line in sys.stdin:
            if line.strip():
                turn = [*opening, {"role": "user", "content": line.strip()}]
                answer = reply(model, tokenizer, turn, sampling, template)
                print(f"assistant> {answer}", flush=True)
