"""The end of `make demo`: a few training prompts answered by the base model and by the tuned one,
beside the answer the data taught, so a reader sees what the run learned.

    python -m launcher.infer.demo recipes/demo_tiny.yaml [--prompts 3]

The recipe's own model, data and output.dir are used; the adapter is switched off for the
"before" answer (PEFT's disable_adapter), so both come from one loaded model.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.recipe.load import load_recipe, output_folder

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe


def similarity(answer: str, reference: str) -> float:
    """How much of the reference the answer reproduces, 0..1 (difflib's ratio on characters)."""
    return difflib.SequenceMatcher(None, answer.strip(), reference.strip()).ratio()


def before_and_after(recipe: Recipe, count: int) -> list[dict]:
    """For the first `count` training examples: prompt, taught answer, base answer, tuned answer."""
    from launcher.data.pipeline import load_examples
    from launcher.infer.chat import Sampling, load_for_chat, reply

    examples = load_examples(recipe["data"]["datasets"], recipe["data"])[:count]
    model, tokenizer = load_for_chat(recipe["model"]["path"], recipe["output"]["dir"])
    sampling = Sampling(max_new_tokens=64)
    rows = []
    for example in examples:
        prompt, taught = example.messages[:-1], example.messages[-1]["content"]
        with model.disable_adapter():
            before = reply(model, tokenizer, prompt, sampling)
        after = reply(model, tokenizer, prompt, sampling)
        rows.append(
            {
                "prompt": prompt[-1]["content"],
                "taught": taught,
                "before": before,
                "after": after,
                "before_match": similarity(before, taught),
                "after_match": similarity(after, taught),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.infer.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="the recipe the demo trained (its output.dir holds the adapter)")
    parser.add_argument("--prompts", type=int, default=3, help="training prompts to show")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    if not (Path(output_folder(recipe)) / "adapter_config.json").is_file():
        print(
            f"demo: error: {output_folder(recipe)} holds no trained adapter. Fix: run `launch {args.recipe}` first",
            file=sys.stderr,
        )
        return 2
    for k, row in enumerate(before_and_after(recipe, args.prompts), start=1):
        print(f"\n[demo] {k}. user: {row['prompt']}")
        print(f"  taught by the data : {row['taught']}")
        print(f"  before tuning      : {row['before']!r}  ({row['before_match']:.0%} match)")
        print(f"  after tuning       : {row['after']!r}  ({row['after_match']:.0%} match)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
