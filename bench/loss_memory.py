"""Loss memory: train.loss_kernel chunked vs plain (full logits), at a 151,936-token vocabulary
(Qwen2's) and 4,096 tokens, forward + backward of the LM head and the loss.

1. Each kernel runs in its own process (same seeded data), which reports how far its memory
   rose above what the inputs, the head's weight and its gradient already hold: on CUDA
   torch.cuda.max_memory_allocated, on CPU the peak RSS (ru_maxrss) against the RSS before the loss.
2. Writes the section "## Loss memory" of docs/benchmarks.md: both peaks, their ratio, and the
   chunked peak as a share of one fp32 logits tensor (the target is <= 0.3x).

    python bench/loss_memory.py [--tokens 4096] [--vocab 151936] [--hidden 896] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import base_env, machine, versions, write_section  # noqa: E402
from launcher.kernels.loss import CHUNK_TOKENS  # noqa: E402

SECTION = "## Loss memory"
TARGET = 0.3  # chunked peak / one fp32 logits tensor


def _rss_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


def child(kernel: str, tokens: int, vocab: int, hidden_size: int, device: str) -> dict:
    """One kernel's forward + backward; memory in MiB above the state before the loss."""
    import torch
    import torch.nn.functional as F

    from launcher.kernels.loss import chunk_count, chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device)
    hidden = torch.randn(1, tokens, hidden_size, device=device, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    head.weight.grad = torch.zeros_like(head.weight)  # the gradient both kernels must hold anyway
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    if kernel == "plain":  # what transformers' causal-LM loss does: full logits, upcast, cross-entropy
        logits = head(hidden).float()[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, vocab), labels[:, 1:].reshape(-1), reduction="mean")
    else:
        loss = chunked_cross_entropy(hidden, head, labels, chunk_count(tokens))
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kernel": kernel, "extra_mib": peak - before, "loss": loss.item()}


def run(kernel: str, args) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kernel,
            "--tokens",
            str(args.tokens),
            "--vocab",
            str(args.vocab),
            "--hidden",
            str(args.hidden),
            "--device",
            args.device,
        ],
        capture_output=True,
        text=True,
        env={**base_env(), **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {})},
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(args, plain: dict, chunked: dict) -> str:
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    share = chunked["extra_mib"] / logits_mib
    slice_mib, weight_mib = CHUNK_TOKENS * args.vocab * 4 / 2**20, args.vocab * args.hidden * 4 / 2**20
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return "\n".join(
        [
            SECTION,
            "",
            f"`python bench/loss_memory.py --tokens {args.tokens} --vocab {args.vocab} --hidden {args.hidden}` ({when}; {machine() if args.device == 'cpu' else args.device}; {versions()}).",
            f"LM head + causal-LM loss, forward and backward, {args.tokens:,} tokens, vocabulary {args.vocab:,}, hidden "
            f"{args.hidden}, fp32; each kernel in its own process, memory above the inputs, the head's weight and its "
            f"gradient ({'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'peak RSS'}). One fp32 logits "
            f"tensor is {logits_mib:,.0f} MiB.",
            "",
            "| loss kernel | peak above the weights (MiB) | x one fp32 logits tensor | loss |",
            "| --- | --- | --- | --- |",
            *(
                f"| {r['kernel']} | {r['extra_mib']:,.0f} | {r['extra_mib'] / logits_mib:.2f} | {r['loss']:.6f} |"
                for r in (plain, chunked)
            ),
            "",
            f"chunked / plain: **{chunked['extra_mib'] / plain['extra_mib']:.2f}x**; chunked holds {share:.2f}x one logits "
            f"tensor, which {'**meets**' if share <= TARGET else '**misses**'} the target (<= {TARGET}x). The losses agree "
            f"to {abs(plain['loss'] - chunked['loss']):.1e}.",
            "",
            f"Where chunked's peak goes: one slice of {CHUNK_TOKENS} tokens' fp32 logits ({slice_mib:,.0f} MiB), which the "
            f"cross-entropy turns into its own gradient in place (autograd's version held logits, log-softmax and their "
            f"gradient: three), and the LM head's weight gradient of that slice ({weight_mib:,.0f} MiB) before it is added "
            "to the accumulated one; the rest is the allocator and the runtime.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=896)  # Qwen2-0.5B's width
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--child", choices=("plain", "chunked"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.vocab, args.hidden, args.device)))
        return
    plain, chunked = run("plain", args), run("chunked", args)
    section = render(args, plain, chunked)
    print(section)
    write_section(Path(args.out), section, SECTION)


if __name__ == "__main__":
    main()
