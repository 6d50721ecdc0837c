"""Train the byte-level BPE tokenizer of ``builtin:tiny-qwen2``.

Usage (from the repository root)::

    python -m launcher.model.builtin.train_tokenizer            # rewrite the tokenizer files
    python -m launcher.model.builtin.train_tokenizer --check    # exit 1 if they are stale

Inputs: every ``*.txt`` file in ``launcher/model/builtin/corpus/`` (sorted by name) plus the text
of ``data/demo_sft.json`` (instruction, input, output, system, history). Outputs:
``launcher/model/builtin/tiny_qwen2/tokenizer.json`` and ``tokenizer_config.json``. Training is
deterministic: the same inputs give byte-identical files (``--check`` relies on that).

Design notes
------------
* The pipeline is exactly Qwen2's: NFC normalizer, the Qwen2 split regex, byte-level
  pre-tokenizer without its own regex, BPE without unk token, byte-level decoder. This
  matters for transformers 5.x: ``Qwen2Tokenizer`` there does not use the pipeline stored in
  tokenizer.json; it takes vocab + merges from the file and rebuilds Qwen2's pipeline in
  code. Training with the identical pipeline means the raw ``tokenizers`` file, transformers
  4.x (which reads tokenizer.json as is) and transformers 5.x give the same ids.
* Consequence of NFC: ``decode(encode(x)) == x`` holds for NFC-normalized text (which is
  virtually all real text); decomposed input such as "e" + U+0301 comes back composed.
* Vocabulary: 2048 ids in total, ids 0-6 are the added tokens below, then the 256 byte
  symbols, then merges.
* ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` are special (skipped by
  ``decode(..., skip_special_tokens=True)``). ``<tool_call>``, ``</tool_call>``,
  ``<tool_response>``, ``</tool_response>`` are added tokens that are *not* special, as in
  Qwen2.5: they are always matched as single tokens, but they survive
  ``skip_special_tokens=True`` so a tool-call parser still finds them in decoded output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[2]
CORPUS_DIR = PACKAGE_DIR / "corpus"
DEFAULT_DATASET = REPO_ROOT / "data" / "demo_sft.json"
OUT_DIR = PACKAGE_DIR / "tiny_qwen2"

VOCAB_SIZE = 2048
MODEL_MAX_LENGTH = 2048

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
ADDED_TOKENS = SPECIAL_TOKENS + TOOL_TOKENS  # ids 0..6 in this order

# The Qwen2 pre-tokenization split pattern (contractions, letters, single digits,
# punctuation runs, newlines, whitespace). Must stay identical to the one transformers'
# Qwen2Tokenizer hard-codes; tests/model/test_builtin.py checks that both give the same ids.
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML in the style of Qwen2.5, written for this project.
# * first message not "system" -> default system prompt
# * tools -> listed as JSON inside <tools></tools> in the system turn, plus the calling convention
# * assistant tool_calls -> one <tool_call>{"name": ..., "arguments": ...}</tool_call> block each
#   (arguments given as a JSON string are inserted verbatim, dicts are serialized)
# * consecutive "tool" messages -> one user turn holding one <tool_response> block each
# * {% generation %} marks what the assistant writes (content + <|im_end|>), so
#   apply_chat_template(..., return_assistant_tokens_mask=True) works
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '" + DEFAULT_SYSTEM + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system_message -}}"
    "{%- if tools -%}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more of the functions below to help with the request. "
    "Their signatures are given as JSON inside <tools></tools>:\\n<tools>' -}}"
    "{%- for tool in tools -%}"
    "{{- '\\n' + (tool | tojson) -}}"
    "{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nTo call a function, reply with a JSON object holding its name and arguments "
    "inside <tool_call></tool_call> tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>\' -}}'
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for tool_call in message['tool_calls'] -%}"
    "{%- if tool_call['function'] is defined -%}{%- set call = tool_call['function'] -%}"
    "{%- else -%}{%- set call = tool_call -%}{%- endif -%}"
    "{%- if loop.first and not message['content'] -%}{{- '<tool_call>\\n' -}}"
    "{%- else -%}{{- '\\n<tool_call>\\n' -}}{%- endif -%}"
    "{{- '{\"name\": ' + (call['name'] | tojson) + ', \"arguments\": ' -}}"
    "{%- if call['arguments'] is string -%}{{- call['arguments'] -}}"
    "{%- else -%}{{- call['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or loop_messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{- '<|im_start|>user' -}}"
    "{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop_messages[loop.index0 + 1]['role'] != 'tool' -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def iter_corpus(corpus_dir: Path, dataset: Path) -> Iterator[str]:
    """Yield training texts in a fixed order: corpus paragraphs, then dataset fields."""
    for path in sorted(corpus_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        for paragraph in text.split("\n\n"):
            if paragraph.strip():
                yield paragraph
    records: list[dict[str, Any]] = json.loads(dataset.read_text(encoding="utf-8"))
    for record in records:
        for key in ("system", "instruction", "input", "output"):
            value = record.get(key)
            if value:
                yield value
        for turn in record.get("history") or []:
            yield from (t for t in turn if t)


def qwen2_style_bpe():
    """An untrained byte-level BPE `tokenizers.Tokenizer` with Qwen2's normalizer, pre-tokenizer and decoder."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_tokenizer(corpus_dir: Path, dataset: Path) -> str:
    """Train and return the tokenizer.json text (deterministic)."""
    from tokenizers import pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tokenizer = qwen2_style_bpe()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=ADDED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(iter_corpus(corpus_dir, dataset))
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))

    data = json.loads(tokenizer.to_str())
    for token in data["added_tokens"]:
        token["special"] = token["content"] in SPECIAL_TOKENS
    size = len(data["model"]["vocab"])
    if size != VOCAB_SIZE:
        raise SystemExit(f"trained vocab has {size} entries, expected {VOCAB_SIZE}; add corpus text")
    for i, content in enumerate(ADDED_TOKENS):
        if data["model"]["vocab"].get(content) != i:
            raise SystemExit(f"{content} did not get id {i}")
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def tokenizer_config() -> dict[str, Any]:
    added = {
        str(i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": content in SPECIAL_TOKENS,
        }
        for i, content in enumerate(ADDED_TOKENS)
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "added_tokens_decoder": added,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }


def render_outputs(corpus_dir: Path, dataset: Path) -> dict[str, str]:
    return {
        "tokenizer.json": build_tokenizer(corpus_dir, dataset),
        "tokenizer_config.json": json.dumps(tokenizer_config(), ensure_ascii=False, indent=2) + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the builtin:tiny-qwen2 tokenizer.")
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 if the files on disk are stale")
    args = parser.parse_args(argv)

    outputs = render_outputs(args.corpus, args.dataset)
    if args.check:
        stale = [
            name
            for name, text in outputs.items()
            if not (args.out / name).exists() or (args.out / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            print(f"stale: {', '.join(stale)}; run python -m launcher.model.builtin.train_tokenizer", file=sys.stderr)
            return 1
        print("tokenizer files are up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in outputs.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {', '.join(outputs)} to {args.out} (vocab {VOCAB_SIZE}, added tokens {ADDED_TOKENS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
