"""output.dir/completions.jsonl: a few of the completions a run sampled, with their prompts, rewards and
advantages, appended every N steps by rank 0 (stage grpo), so what the model says can be read beside its curves."""

from __future__ import annotations

import json
from pathlib import Path

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
