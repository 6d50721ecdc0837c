"""Data preprocessing speed and packing efficiency on a generated long-tailed chat dataset.

1. Generates (seeded) 20k sharegpt-style conversations, 1-6 rounds, whose token lengths
   follow a clipped log-normal (~40 to ~4000 tokens, ~10M tokens in all), from a Zipfian
   lexicon of pseudo-words, and trains a 32k byte-level BPE tokenizer (Qwen2's pipeline,
   ChatML template) on part of that text.
2. Times, over the same conversations: our preprocessing (template + tokenize + exact
   masks + cutoff + neat packing) with the tokenizer's own template (`auto`) and the
   registered `qwen2` template, with 1 and 2 workers; a loop of
   `tokenizer.apply_chat_template(..., tokenize=True)`; and the floor, one batched
   `tokenizer(texts)` call over the already-rendered strings.
3. Packing alone: lengths to bins for 1M long-tailed lengths.
4. Writes the section "## Data preprocessing" of docs/benchmarks.md (other sections kept).

    python bench/data.py [--conversations 20000] [--repeats 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a file: make the repo's `launcher` importable without installing it

from launcher.data.formats import Example  # noqa: E402
from launcher.data.packing import pack_examples, pack_lengths  # noqa: E402
from launcher.data.pipeline import encode_examples  # noqa: E402
from launcher.model.builtin.train_tokenizer import CHAT_TEMPLATE, qwen2_style_bpe  # noqa: E402

SECTION = "## Data preprocessing"
CUTOFF = 2048
VOCAB = 32768
SYLLABLES = (
    "ka ri to mo sa ne lu pe di go ba shi en or an il us te ver con pro ex ing tion al er ly ment st qu a e i o u th ch"
).split()
TARGETS = {"floor_ratio": 1.5, "loop_ratio": 0.75, "packing_efficiency": 0.997, "pack_1m_s": 1.0}


# ---- data ------------------------------------------------------------------------------------------------


class Words:
    """Zipf-distributed pseudo-words with punctuation: text that BPE merges like a natural language."""

    def __init__(self, rng: np.random.Generator, size: int = 50_000):
        lengths = rng.integers(1, 5, size)
        picks = rng.integers(0, len(SYLLABLES), (size, 4))
        self.lexicon = ["".join(SYLLABLES[j] for j in picks[i, : lengths[i]]) for i in range(size)]
        self.lexicon[:6] = [",", ".", "?", "the", "of", "and"]
        weights = np.cumsum(1.0 / np.arange(1, size + 1) ** 1.05)
        self.cdf = weights / weights[-1]
        self.rng = rng

    def text(self, count: int) -> str:
        indices = np.searchsorted(self.cdf, self.rng.random(max(1, count))).tolist()
        return " ".join(map(self.lexicon.__getitem__, indices))


def conversations(count: int, seed: int) -> list[list[dict]]:
    """Long-tailed conversations: total words log-normal, clipped; longer ones have more rounds."""
    rng = np.random.default_rng(seed)
    words = Words(rng)
    totals = np.clip(rng.lognormal(mean=5.6, sigma=0.95, size=count), 30, 3000).astype(int)  # words, ~1.3 tokens each
    out = []
    for total in totals.tolist():
        rounds = int(np.clip(1 + total // 400 + rng.integers(0, 2), 1, 6))
        per_round = max(8, total // rounds)
        messages = [{"role": "system", "content": words.text(int(rng.integers(4, 20)))}] if rng.random() < 0.3 else []
        for _ in range(rounds):
            asked = max(3, int(per_round * rng.uniform(0.1, 0.4)))
            messages += [
                {"role": "user", "content": words.text(asked)},
                {"role": "assistant", "content": words.text(per_round - asked)},
            ]
        out.append(messages)
    return out


def train_tokenizer(sample: list[str], folder: Path):
    """A 32k byte-level BPE with Qwen2's pipeline and the builtin ChatML template, as a transformers tokenizer."""
    from tokenizers import pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = qwen2_style_bpe()
    trainer = BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(sample, trainer=trainer, length=len(sample))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


# ---- timing ----------------------------------------------------------------------------------------------


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def ours(examples: list[dict], tokenizer, template: str, workers: int):
    cfg = {"cutoff_len": CUTOFF, "train_on_prompt": False, "mask_history": False, "num_workers": workers}
    data = encode_examples(examples, cfg, tokenizer, template)
    return data, pack_examples(data.examples, CUTOFF)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    chats = conversations(args.conversations, args.seed)
    sample = [m["content"] for chat in chats[: max(1, len(chats) // 4)] for m in chat]
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = train_tokenizer(sample, Path(folder))
    setup_s = time.perf_counter() - started
    examples = [Example(chat, where="generated") for chat in chats]
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    print(
        f"setup {setup_s:.1f} s: {len(chats)} conversations, {sum(lengths):,} tokens "
        f"(min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)})",
        flush=True,
    )

    runs = {
        "floor": lambda: tokenizer(texts),
        "apply_chat_template": lambda: [tokenizer.apply_chat_template(c, tokenize=True) for c in chats],
    }
    for template in ("auto", "qwen2"):
        for workers in (1, 2):
            runs[f"ours {template} x{workers}"] = lambda t=template, w=workers: ours(examples, tokenizer, t, w)
    million = np.clip(np.random.default_rng(args.seed).lognormal(5.6, 1.0, 1_000_000), 1, CUTOFF).astype(int).tolist()
    runs["pack 1M"] = lambda: pack_lengths(million, CUTOFF)
    times: dict[str, list[float]] = {name: [] for name in runs}
    stats: dict[str, tuple] = {}
    load = [os.getloadavg()[0]]
    for repeat in range(args.repeats):  # interleaved, so drift in the machine's load hits every path alike
        for name, run in runs.items():
            seconds, output = timed(run)
            times[name].append(seconds)
            if name.startswith("ours"):  # keep counts only: big outputs left alive would slow later runs' GC
                data, rows = output
                stats[name] = (len(data.examples), data.dropped, len(rows.rows), rows.efficiency)
            elif name == "pack 1M":
                stats[name] = sum(million) / (len(output) * CUTOFF)
            del output
            print(f"run {repeat + 1}: {name}: {seconds:.2f} s", flush=True)
    load.append(os.getloadavg()[0])
    results = {name: min(values) for name, values in times.items()}  # other work only ever slows a run down
    for name, (count, dropped, rows, efficiency) in ((n, s) for n, s in stats.items() if n.startswith("ours")):
        print(f"{name}: {count} examples ({dropped} dropped), {rows} rows, efficiency {efficiency:.4%}")
    write_section(Path(args.out), report(args, results, times, stats, lengths, chats, setup_s, load))


# ---- report ----------------------------------------------------------------------------------------------


def report(
    args, results: dict, times: dict, stats: dict, lengths: list[int], chats: list, setup_s: float, load: list[float]
) -> str:
    floor, loop = results["floor"], results["apply_chat_template"]
    total = sum(lengths)
    rows = [
        "| path | s (best) | runs s | examples/s | × floor | × apply_chat_template loop |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, label: str) -> None:
        seconds = results[name]
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        rows.append(
            f"| {label} | {seconds:.2f} | {runs} | {len(chats) / seconds:,.0f} | {seconds / floor:.2f} | "
            f"{seconds / loop:.2f} |"
        )

    row("floor", "floor: one batched `tokenizer(texts)` over rendered strings (ids only)")
    row("apply_chat_template", "loop of `apply_chat_template(..., tokenize=True)` (ids only)")
    for name in (k for k in results if k.startswith("ours")):
        _, template, workers = name.split()
        row(
            name,
            f"ours, template `{template}`, {workers[1:]} worker(s): render + tokenize + masks + cutoff + neat packing",
        )
    best = min(results[k] for k in results if k.startswith("ours")) / floor
    auto1 = results["ours auto x1"] / floor
    efficiency = min(s[3] for n, s in stats.items() if n.startswith("ours"))
    pack_s = results["pack 1M"]
    cores = os.cpu_count()
    verdict = [
        f"- Preprocessing within {TARGETS['floor_ratio']}× the floor: best {best:.2f}×, `auto` with 1 worker "
        f"{auto1:.2f}× — **{'met' if best <= TARGETS['floor_ratio'] else 'not met'}**.",
        f"- Well under the apply_chat_template loop (at most {TARGETS['loop_ratio']:.0%} of its time): ours `auto` "
        f"takes {results['ours auto x1'] / loop:.0%} (1 worker) and {results['ours auto x2'] / loop:.0%} (2 workers) — "
        f"**{'met' if min(results['ours auto x1'], results['ours auto x2']) / loop <= TARGETS['loop_ratio'] else 'not met'}**.",
        f"- Neat packing efficiency ≥ {TARGETS['packing_efficiency']:.1%} at cutoff {CUTOFF}: {efficiency:.3%} — "
        f"**{'met' if efficiency >= TARGETS['packing_efficiency'] else 'not met'}**.",
        f"- Packing 1M lengths < {TARGETS['pack_1m_s']:.0f} s: {pack_s:.2f} s "
        f"({stats['pack 1M']:.3%} efficient) — **{'met' if pack_s < TARGETS['pack_1m_s'] else 'not met'}**.",
    ]
    q1, auto2, q2 = results["ours qwen2 x1"], results["ours auto x2"], results["ours qwen2 x2"]
    why = [
        f"- Where the time goes: tokenization itself. The apply_chat_template loop (one render and one "
        f"single-threaded tokenize per conversation) takes {loop / floor:.2f}× the floor, so a batched call gains "
        "over a loop only through the tokenizer's threads, which need idle cores. Ours with the registered `qwen2` "
        f"template (rendered in Python) takes {q1 / floor:.2f}× the floor: masks, cutoff and packing cost little "
        f"beside tokenizing (conversations over the cutoff reuse their whole text's tokens instead of being "
        f"tokenized again). `auto` takes {results['ours auto x1'] / q1:.2f}× `qwen2`: one Jinja render per "
        "conversation, plus one with markers per conversation shape.",
        f"- 2 workers take {auto2 / results['ours auto x1']:.2f}× (`auto`) and {q2 / q1:.2f}× (`qwen2`) the time of "
        f"one on these {cores} cores: each forked worker tokenizes single-threaded, and forking and sending the "
        "tokens back cost more than they save when one batched call already keeps the cores busy.",
    ]
    return "\n".join(
        [
            SECTION,
            "",
            f"Generated by `python bench/data.py --conversations {args.conversations} --repeats {args.repeats}` on "
            f"{datetime.now(timezone.utc):%Y-%m-%d} (UTC).",
            "",
            f"- Machine: {cores} CPU cores ({platform.machine()}), no GPU, shared with other work: 1-minute load "
            f"average {load[0]:.1f} at the start and {load[1]:.1f} at the end of the timed runs (on {cores} cores), so "
            "absolute times are several times an idle machine's; the paths run interleaved, so ratios hold better.",
            f"- Versions: Python {platform.python_version()}, tokenizers {version('tokenizers')}, "
            f"transformers {version('transformers')}.",
            f"- Data: {len(chats):,} generated conversations (seed {args.seed}), {total:,} tokens, "
            f"{min(lengths)}–{max(lengths)} tokens each (median {int(np.median(lengths))}, "
            f"p99 {int(np.percentile(lengths, 99))}); 1–6 rounds, 30% with a system prompt. Tokenizer: {VOCAB:,}-token "
            f"byte-level BPE trained on a quarter of the text, ChatML template. Setup (generation + training) {setup_s:.0f} s.",
            f"- Best (minimum) of {args.repeats} interleaved runs: other work on the shared cores only ever slows a run "
            f"down. cutoff_len {CUTOFF}: conversations "
            "longer than that lose their oldest rounds, as in training.",
            "",
            *rows,
            "",
            *verdict,
            *why,
            "",
        ]
    )


def write_section(path: Path, section: str) -> None:
    """Replace (or append) this script's section of the benchmarks page, keeping the others."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "\n".join(lines[:start] + section.rstrip("\n").splitlines() + [""] + lines[end:])
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote {SECTION!r} in {path}")


if __name__ == "__main__":
    main()
