"""`train.eval_generate`: at each evaluation of an sft run, generate replies for data.eval_datasets
with the model being trained and log `launch eval`'s BLEU-4 / ROUGE (metrics.py) as eval/bleu-4,
eval/rouge-1, eval/rouge-2, eval/rouge-l.

The prompts, the generation settings (the recipe's eval section) and the batched generation are
launcher/infer/evaluate.py's, so a checkpoint saved at an eval step scores the same under `launch eval`
(greedy decoding; sampling draws from the training run's random state). Every rank generates the
whole eval set: under ZeRO-3 each forward needs every rank (transformers' generate syncs them), and
all ranks then log the same numbers, which TensorBoard's callback writes on rank 0 only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainerCallback

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe


class GenerateMetrics(TrainerCallback):
    def __init__(self, trainer, recipe: Recipe):
        from launcher.infer.evaluate import generation_sampling, load_prompts

        self.trainer, self.generation, self.template = trainer, recipe["eval"], recipe["model"]["template"]
        self.sampling = generation_sampling(recipe["eval"])
        rows = load_prompts(recipe, recipe["data"]["eval_datasets"])
        self.prompts, self.labels = [messages for messages, _ in rows], [label for _, label in rows]

    def on_evaluate(self, args, state, control, **kwargs):
        from launcher.infer.chat import reply_batch
        from launcher.infer.metrics import similarity

        model, tokenizer = self.trainer.model, self.trainer.processing_class
        training, padding_side = model.training, tokenizer.padding_side
        model.eval()
        try:
            replies, _ = reply_batch(
                model, tokenizer, self.prompts, self.sampling, self.generation["batch_size"], self.template
            )
        finally:
            model.train(training)
            tokenizer.padding_side = padding_side  # reply_batch pads on the left for generation
        scores = similarity(replies, self.labels)
        self.trainer.log({f"eval_{name}": value for name, value in scores.items()})
        if state.is_world_process_zero:
            print(
                f"[eval] step {state.global_step}/{state.max_steps} | "
                + " | ".join(f"{name} {value:.4f}" for name, value in scores.items()),
                flush=True,
            )


def install(trainer, recipe: Recipe) -> None:
    """Add the callback when the recipe asks for it (train.eval_generate)."""
    if recipe["train"]["eval_generate"]:
        trainer.add_callback(GenerateMetrics(trainer, recipe))
