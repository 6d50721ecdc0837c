"""output.dir/completions.jsonl: a few of the completions a run sampled, with their prompts, rewards and
advantages, appended every N steps by rank 0 (stage grpo), so what the model says can be read beside its curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

from launcher.checkpoint.paths import COMPLETIONS_FILE

SAMPLES = 4  # completions written per record: enough to read, few enough to keep the file small


def append_samples(
    output_dir: str, step: int, prompts: list, completions: list, rewards: dict[str, list], advantages: list
) -> None:
    """One JSON line per completion of the first SAMPLES: step, prompt, completion, each reward by name, advantage."""
    lines = [
        json.dumps(
            {
                "step": step,
                "prompt": prompts[i],
                "completion": completions[i],
                "rewards": {name: values[i] for name, values in rewards.items()},
                "advantage": advantages[i],
            }
        )
        for i in range(min(SAMPLES, len(completions)))
    ]
    with (Path(output_dir) / COMPLETIONS_FILE).open("a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def drop_samples_after(output_dir: str, step: int) -> None:
    """Keep the records of steps up to `step` (a resumed run's checkpoint): the steps after it are sampled again."""
    path = Path(output_dir) / COMPLETIONS_FILE
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    temporary = path.with_name(f".{COMPLETIONS_FILE}.tmp")  # a reader never sees half a file
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


class SamplesOnResume(TrainerCallback):
    """Rank 0, at the start of training (the checkpoint's step restored): drop what the interrupted run wrote past it."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            drop_samples_after(self.output_dir, state.global_step)
