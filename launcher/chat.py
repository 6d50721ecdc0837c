"""`launch chat`: generation with a base model and an optional PEFT adapter, through the model's
chat template. One-shot (--prompt), batch prediction (--input rows.jsonl --output preds.jsonl),
interactive (a terminal on stdin), or one prompt per stdin line (a pipe). Greedy by default;
--do-sample with --temperature / --top-p / --top-k / --seed samples."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.checkpoint.inputs import CheckpointError, adapter_config, read_json, safetensors_files


class ChatError(ValueError):
    """Bad chat input (a malformed row, sampling flags without --do-sample); the message names it."""


@dataclass
class Sampling:
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self):
        given = [flag for flag, value in (("--temperature", self.temperature), ("--top-p", self.top_p),
                                          ("--top-k", self.top_k)) if value is not None]
        if given and not self.do_sample:
            raise ChatError(f"{', '.join(given)} only apply when sampling. Fix: add --do-sample (greedy is the default)")

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update({k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p),
                                             ("top_k", self.top_k)) if v is not None})
        return kwargs


DTYPES = ("auto", "bf16", "fp16", "fp32")


def chat_dtype(requested: str, adapter: str | None, on_gpu: bool) -> str:
    """--dtype: auto = the dtype the adapter's run trained in (its plan.json), else bf16 on a GPU, fp32 on CPU."""
    if requested not in DTYPES:
        raise ChatError(f"--dtype {requested}: not one of {', '.join(DTYPES)}")
    if requested == "fp16" and not on_gpu:
        raise ChatError("--dtype fp16 needs a CUDA GPU and none is visible. Fix: --dtype bf16 or fp32 on CPU")
    if requested != "auto":
        return requested
    plan = Path(adapter) / "plan.json" if adapter else None
    if plan is not None and plan.is_file():
        trained = read_json(plan).get("dtype")
        if trained in DTYPES[1:] and (on_gpu or trained != "fp16"):
            return trained
    return "bf16" if on_gpu else "fp32"


def load_for_chat(model_path: str, adapter: str | None = None, trust_remote_code: bool = False, dtype: str = "auto"):
    """(model, tokenizer) on the GPU when there is one, in eval mode, in `dtype` (chat_dtype); the adapter is
    loaded with PEFT. Damaged or missing adapter and model files are refused (CheckpointError) before anything loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.builtin import local_model_path

    model_dir = local_model_path(model_path)
    if adapter:
        adapter_config(adapter)
    if Path(model_dir).is_dir():
        read_json(Path(model_dir) / "config.json")
        safetensors_files(Path(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(adapter or model_dir, trust_remote_code=trust_remote_code)
    on_gpu = torch.cuda.is_available()
    dtype = chat_dtype(dtype, adapter, on_gpu)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter)
        except RuntimeError as err:  # load_state_dict: the adapter's shapes are another model's
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)).rstrip(".")
            raise CheckpointError(f"adapter {adapter} does not fit the model {model_path}: {detail}. "
                                  "Fix: pass the base model the adapter was trained on") from None
    if on_gpu:
        model = model.cuda()
    print(f"[chat] {model_path}{' + ' + str(adapter) if adapter else ''} in {dtype} on {'cuda' if on_gpu else 'cpu'}",
          file=sys.stderr, flush=True)
    return model.eval(), tokenizer


def encode_prompt(tokenizer, messages: list[dict]):
    """input_ids/attention_mask of `messages` rendered with the chat template, ready for the assistant's turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)


def reply(model, tokenizer, messages: list[dict], sampling: Sampling) -> str:
    """The assistant's next turn after `messages`, rendered with the tokenizer's chat template."""
    import torch

    inputs = encode_prompt(tokenizer, messages).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, **sampling.generate_kwargs(), eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def reply_batch(model, tokenizer, conversations: list[list[dict]], sampling: Sampling,
                batch_size: int = 8) -> tuple[list[str], int]:
    """The assistant's next turn for each conversation, `batch_size` at a time (left-padded), and the number of
    tokens generated (through each reply's EOS)."""
    import torch

    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
    replies, generated = [], 0
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, **sampling.generate_kwargs(), eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)
        for row in output[:, inputs["input_ids"].shape[1]:].tolist():
            ends = [i for i, token in enumerate(row) if token == tokenizer.eos_token_id]
            generated += ends[0] + 1 if ends else len(row)
            replies.append(tokenizer.decode(row, skip_special_tokens=True))
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
    raise ChatError(f"{where}: expected an openai row {{\"messages\": [...]}} or an alpaca row "
                    "{\"instruction\": ..., \"input\": ..., \"output\": ...}")


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


def predict_file(model, tokenizer, requests: list[Request], target: Path, sampling: Sampling) -> None:
    """Write one {"prompt", "prediction", "label"} row per request, in order."""
    with open(target, "w", encoding="utf-8") as out:
        for request in requests:
            row = {"prompt": request.messages, "prediction": reply(model, tokenizer, request.messages, sampling),
                   "label": request.label}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def interactive(model, tokenizer, sampling: Sampling) -> None:
    """A multi-turn conversation on the terminal; /clear starts over, /exit or Ctrl-D leaves."""
    print("[chat] multi-turn; /clear starts a new conversation, /exit or Ctrl-D leaves", flush=True)
    history: list[dict] = []
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
            history = []
            continue
        if line:
            history.append({"role": "user", "content": line})
            answer = reply(model, tokenizer, history, sampling)
            history.append({"role": "assistant", "content": answer})
            print(f"assistant> {answer}", flush=True)


def chat(model_path: str, adapter: str | None, prompts: list[str], sampling: Sampling,
         trust_remote_code: bool = False, input_file: str | None = None, output_file: str | None = None,
         dtype: str = "auto") -> None:
    """Answer --prompt messages, a batch file, a terminal conversation, or one prompt per stdin line."""
    if (input_file is None) != (output_file is None):
        raise ChatError("--input and --output go together: rows in, predictions out")
    requests = read_requests(Path(input_file)) if input_file else None  # bad rows refused before loading the model
    model, tokenizer = load_for_chat(model_path, adapter, trust_remote_code, dtype)
    if sampling.seed is not None:
        from transformers import set_seed

        set_seed(sampling.seed)
    if requests is not None:
        predict_file(model, tokenizer, requests, Path(output_file), sampling)
        print(f"[chat] {len(requests)} predictions -> {output_file}", flush=True)
    elif prompts:
        for prompt in prompts:
            answer = reply(model, tokenizer, [{"role": "user", "content": prompt}], sampling)
            print(f"user> {prompt}\nassistant> {answer}", flush=True)
    elif sys.stdin.isatty():
        interactive(model, tokenizer, sampling)
    else:
        for line in sys.stdin:
            if line.strip():
                answer = reply(model, tokenizer, [{"role": "user", "content": line.strip()}], sampling)
                print(f"assistant> {answer}", flush=True)
