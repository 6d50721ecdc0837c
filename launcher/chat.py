"""Quick generation with a base model and an optional PEFT adapter (`launch chat`)."""

from __future__ import annotations

import sys


def load_for_chat(model_path: str, adapter: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) on CPU/GPU in eval mode; the adapter is loaded with PEFT."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.builtin import local_model_path

    model_dir = local_model_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(adapter or model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if torch.cuda.is_available():
        model = model.cuda()
    return model.eval(), tokenizer


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """Greedy reply to one user message, rendered with the tokenizer's chat template."""
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def chat(model_path: str, adapter: str | None, prompts: list[str], max_new_tokens: int,
         trust_remote_code: bool = False) -> None:
    """Answer the given prompts, or read prompts from stdin until EOF when none are given."""
    model, tokenizer = load_for_chat(model_path, adapter, trust_remote_code)
    if prompts:
        for prompt in prompts:
            print(f"user> {prompt}\nassistant> {generate(model, tokenizer, prompt, max_new_tokens)}")
        return
    for line in sys.stdin:
        if line.strip():
            print(f"assistant> {generate(model, tokenizer, line.strip(), max_new_tokens)}", flush=True)
