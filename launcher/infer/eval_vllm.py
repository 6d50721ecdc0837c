"""`eval.engine` of `launch eval`: which engine generates (hf = chat.reply_batch, vllm = vLLM's
offline LLM), and generation through vLLM with the LoRA adapter as a LoRARequest.

auto picks vllm where it is installed and a GPU is visible, else hf; an explicit vllm that cannot
run is refused before any model is loaded. Each eval process (one GPU each, evaluate.py) runs its
own single-GPU vLLM engine over its shard. Not run in this project's CPU test suite (no vLLM there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.data.defaults import TEMPLATE
from launcher.errors import EvalError

if TYPE_CHECKING:
    from launcher.recipe.types import EvalSection

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # max_lora_rank values vLLM accepts


def choose_engine(requested: str, adapter: str | None = None) -> str:
    """hf | vllm for eval.engine auto | hf | vllm; raises EvalError (with the fix) for a vllm that cannot run, an
    adapter vLLM cannot take (vllm_adapter_refusal) first, before vLLM is looked for."""
    from launcher.infer.vllm_adapter import vllm_adapter_refusal
    from launcher.kernels.choice import installed
    from launcher.plan import detect_gpus

    if requested == "hf":
        return "hf"
    refusal = vllm_adapter_refusal(adapter, "eval.engine: hf") if adapter else None
    if refusal:
        if requested == "auto":
            return "hf"
        raise EvalError(f"eval.engine: vllm: the adapter {refusal}")
    missing = [
        why
        for why, ok in (("vLLM is not installed", installed("vllm")), ("no GPU is visible", detect_gpus()["count"] > 0))
        if not ok
    ]
    if not missing:
        return "vllm"
    if requested == "auto":
        return "hf"
    raise EvalError(
        f"eval.engine: vllm, but {' and '.join(missing)}. Fix: `pip install vllm` on a machine with a "
        "CUDA GPU, or set eval.engine: hf (or auto, which uses transformers here)"
    )


def _max_lora_rank(adapter: str) -> int:
    rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def predict_vllm(
    model_path: str,
    adapter: str | None,
    trust_remote_code: bool,
    generation: EvalSection,
    seed: int,
    conversations: list[list[dict]],
    template: str = TEMPLATE,
) -> tuple[list[str], int]:
    """(replies, tokens generated) of each conversation's next assistant turn, through vLLM; greedy unless
    eval.do_sample, with the eval section's max_new_tokens / temperature / top_p / top_k."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from launcher.infer.chat import prompt_text
    from launcher.model.builtin import is_builtin, local_model_path

    path = local_model_path(model_path) if is_builtin(model_path) else model_path
    lora = {"enable_lora": True, "max_lora_rank": _max_lora_rank(adapter), "max_loras": 1} if adapter else {}
    llm = LLM(model=path, trust_remote_code=trust_remote_code, seed=seed, tensor_parallel_size=1, **lora)
    sample = generation["do_sample"]
    params = SamplingParams(
        max_tokens=generation["max_new_tokens"],
        temperature=generation["temperature"] if sample else 0.0,
        top_p=generation["top_p"] if sample else 1.0,
        top_k=generation["top_k"] if sample else -1,
        seed=seed,
    )
    tokenizer = llm.get_tokenizer()
    # the token ids chat.reply_batch feeds: the run's template with the generation prompt, encoded without added
    # special tokens (a template that writes its BOS would get a second one from vLLM's own text encoding)
    texts = [prompt_text(tokenizer, m, template) for m in conversations]
    prompts = [{"prompt_token_ids": tokenizer(text, add_special_tokens=False)["input_ids"]} for text in texts]
    request = LoRARequest("adapter", 1, str(Path(adapter).resolve())) if adapter else None
    outputs = llm.generate(prompts, params, lora_request=request)
    return [o.outputs[0].text for o in outputs], sum(len(o.outputs[0].token_ids) for o in outputs)
