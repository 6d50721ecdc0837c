"""A prefix / P-tuning v2 adapter reaches generation: `launch chat` (reply), `launch eval` (reply_batch,
left-padded batches) and `launch serve` (Engine, adapter picked per request) answer what the adapter's own
forward pass predicts (the oracle: greedy decoding by full forward passes without a cache, the computation the
adapter trained with), not what the bare base answers."""

from __future__ import annotations

import pytest
import torch

from launcher.infer.chat import Sampling, encode_prompt, load_for_chat, reply, reply_batch

pytestmark = pytest.mark.unit

TOKENS = 6
TEMPLATE = "qwen"
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a long story about a cat"}],
]


@pytest.fixture(scope="module")
def prefix_adapter(tmp_path_factory) -> tuple[str, str]:
    """(base folder, adapter folder): PEFT's prefix tuning over the builtin model, its key/values scaled up so
    they move the prediction, saved as a run saves it."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.model.builtin import materialize

    base = materialize("builtin:tiny-qwen2")
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4),
    )
    with torch.no_grad():
        for weight in model.prompt_encoder.parameters():
            weight.mul_(30)
    folder = tmp_path_factory.mktemp("prefix")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return str(base), str(folder)


def _forward_greedy(model, tokenizer, messages: list[dict]) -> str:
    """TOKENS greedy tokens, each from a full forward pass over the prompt and what came so far."""
    ids = encode_prompt(tokenizer, messages, TEMPLATE)["input_ids"]
    prompt = ids.shape[1]
    with torch.no_grad():
        for _ in range(TOKENS):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokenizer.decode(ids[0, prompt:], skip_special_tokens=True)


def test_chat_and_eval_generate_with_the_prefix(prefix_adapter):
    base_path, adapter = prefix_adapter
    base, tokenizer = load_for_chat(base_path)
    tuned, _ = load_for_chat(base_path, adapter)
    greedy = Sampling(max_new_tokens=TOKENS)
    expected = [_forward_greedy(tuned, tokenizer, messages) for messages in CONVERSATIONS]
    assert expected != [_forward_greedy(base, tokenizer, messages) for messages in CONVERSATIONS]
    assert [reply(tuned, tokenizer, messages, greedy, TEMPLATE) for messages in CONVERSATIONS] == expected
    assert reply_batch(tuned, tokenizer, CONVERSATIONS, greedy, template=TEMPLATE)[0] == expected


def test_serve_generates_with_the_prefix_only_for_its_model(prefix_adapter):
    from launcher.infer.serve import ChatRequest, Engine

    base_path, adapter = prefix_adapter
    engine = Engine(base_path, {"tuned": adapter}, "base")
    engine.templates = dict.fromkeys(engine.names, TEMPLATE)
    messages = CONVERSATIONS[1]

    def served(name: str) -> str:
        request = ChatRequest(name, messages, TOKENS, Sampling(max_new_tokens=TOKENS))
        ids, _ = engine.generate(request, engine.encode(request, None))
        return engine.tokenizer.decode(ids, skip_special_tokens=True)

    tuned = served("tuned")
    assert tuned == _forward_greedy(engine.model, engine.tokenizer, messages)
    with engine.model.disable_adapter():
        assert served("base") == _forward_greedy(engine.model, engine.tokenizer, messages) != tuned


def test_eval_generate_during_training_generates_with_the_prefix():
    """train.eval_generate calls reply_batch on the model methods/prefix.py wrapped for training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.methods import prefix
    from launcher.model.builtin import materialize

    folder = materialize("builtin:tiny-qwen2")
    torch.manual_seed(0)
    model = prefix.apply(
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        {"num_virtual_tokens": 4, "prefix_projection": True},
        {},
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = [_forward_greedy(model, tokenizer, messages) for messages in CONVERSATIONS]
    assert (
        reply_batch(model, tokenizer, CONVERSATIONS, Sampling(max_new_tokens=TOKENS), template=TEMPLATE)[0] == expected
    )
