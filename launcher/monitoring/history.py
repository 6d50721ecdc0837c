"""trainer_log.jsonl and loss.png in output.dir, rewritten at each checkpoint save and at the
end (rank 0), so a run can be read without TensorBoard. A run stopped before its last step
(SIGTERM, NaN guard) writes the log but not the plot: plotting takes seconds on a busy CPU and
the stop must be quick; the resumed run redraws it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from launcher.checkpoint.paths import LOG_FILE, PLOT_FILE

TRAIN_KEYS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "trained_tokens_per_second",
    "samples_per_second",
    "step_time",
    "mfu",
    "padding_efficiency",
    "peak_memory_gib",
    # online RL (grpo, as TRL logs it): the summed reward, KL to the reference, completion length, clipping
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "kl",
    "entropy",
    "completions/mean_length",
    "completions/clipped_ratio",
    "clip_ratio/region_mean",
)
PER_REWARD = "rewards/"  # grpo: rewards/<name>/mean and /std, one pair per train.rewards entry


def elapsed_and_eta(state, started: tuple[float, int]) -> tuple[float, float | None]:
    """Seconds since this train() call began, and the remaining seconds at its average pace so far."""
    start_time, start_step = started
    elapsed = time.time() - start_time
    done = state.global_step - start_step
    return elapsed, (elapsed / done * (state.max_steps - state.global_step) if done > 0 else None)


class HistoryCallback(TrainerCallback):
    """One JSON object per training log (and per evaluation): step, total_steps, epoch, percentage,
    the scalars of that log, elapsed and eta in seconds."""

    def __init__(self, output_dir: str):
        self.dir = Path(output_dir)
        self.records: list[dict] = []
        self.written = -1  # how many records the files hold: a stop's save and the train end write once
        self.started = (time.time(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = (time.time(), state.global_step)
        path = self.dir / LOG_FILE
        if state.is_world_process_zero and path.is_file():  # resumed: keep the history up to the checkpoint
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.records = [r for r in records if r["step"] <= state.global_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not ("loss" in logs or "eval_loss" in logs):
            return
        elapsed, eta = elapsed_and_eta(state, self.started)
        record = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": state.epoch,
            "percentage": round(100 * state.global_step / max(state.max_steps, 1), 2),
        }
        keys = (
            [*TRAIN_KEYS, *(k for k in logs if k.startswith(PER_REWARD))]
            if "loss" in logs
            else [k for k in logs if k.startswith("eval_")]
        )
        record.update({key: logs[key] for key in keys if key in logs})
        record.update(elapsed=round(elapsed, 3), eta=None if eta is None else round(eta, 3))
        self.records.append(record)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(plot=not _stopping_early(state, control))

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(plot=not _stopping_early(state, control))

    def write(self, plot: bool) -> None:
        """Both files through a temporary name: a reader never sees half a file."""
        if len(self.records) == self.written:  # plotting is seconds on a busy CPU: not for nothing
            return
        self.written = len(self.records)
        self.dir.mkdir(parents=True, exist_ok=True)
        temporary = self.dir / f".{LOG_FILE}.tmp"
        temporary.write_text("".join(json.dumps(record) + "\n" for record in self.records))
        os.replace(temporary, self.dir / LOG_FILE)
        if plot:
            plot_losses(self.records, self.dir / PLOT_FILE)


def _stopping_early(state, control) -> bool:
    """The loop is leaving before its last step: a stop (SIGTERM, the NaN guard), not the run's end."""
    return control.should_training_stop and state.global_step < state.max_steps


def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "eval", "o-")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            axes.plot(*zip(*points), style, label=f"{label} loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    rewards = [(r["step"], r["reward"]) for r in records if r.get("reward") is not None]
    if rewards:  # grpo: the mean reward on its own scale, right
        right = axes.twinx()
        right.plot(*zip(*rewards), "-", color="tab:green", label="mean reward")
        right.set_ylabel("reward")
        right.legend(loc="upper right")
    temporary = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)
    os.replace(temporary, path)
