"""The learning-rate schedule's recipe keys (train.scheduler and the arguments of each), their cross-key rules, and
what transformers' TrainingArguments receive for them (lr_scheduler_type, lr_scheduler_kwargs, warmup_steps).
Torch-free: the recipe side validates and the worker converts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from launcher.registry import Key

# transformers' SchedulerType names, each built by transformers.get_scheduler
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
WSD = "warmup_stable_decay"
PLATEAU = "reduce_lr_on_plateau"


def _for(*schedulers: str) -> tuple[str, tuple[str, ...]]:
    return ("train.scheduler", schedulers)


KEYS = {  # train.*
    "scheduler": Key(
        "str",
        "cosine",
        "learning-rate schedule (transformers' get_scheduler); its arguments are the train keys valid with it",
        choices=SCHEDULERS,
    ),
    "warmup_ratio": Key(
        "float", 0.03, "share of steps spent warming up (or train.warmup_steps)", low=0, high=1, high_inclusive=False
    ),
    "warmup_steps": Key(
        "int", None, "optimizer steps spent warming up, in place of train.warmup_ratio", nullable=True, low=0
    ),
    "cycles": Key(
        "int", 1, "cosine cycles, each restarting at the peak rate", low=1, only_for=_for("cosine_with_restarts")
    ),
    "lr_end": Key("float", 1.0e-7, "learning rate at the last step", low=0, only_for=_for("polynomial")),
    "power": Key(
        "float", 1.0, "polynomial decay power (1 = linear)", low=0, low_inclusive=False, only_for=_for("polynomial")
    ),
    "timescale": Key(
        "int",
        None,
        "inverse_sqrt time scale (null = the warmup steps)",
        nullable=True,
        low=1,
        only_for=_for("inverse_sqrt"),
    ),
    "min_lr_ratio": Key(
        "float",
        0.0,
        "the lowest rate as a share of train.lr (transformers' min_lr_rate / min_lr_ratio)",
        low=0,
        high=1,
        high_inclusive=False,
        only_for=_for("cosine_with_min_lr", WSD),
    ),
    "decay_steps": Key(
        "int",
        None,
        "steps of the final decay (required; the stable phase lasts until it)",
        nullable=True,
        low=1,
        only_for=_for(WSD),
    ),
    "decay_type": Key(
        "str", "cosine", "shape of the final decay", choices=("cosine", "linear", "1-sqrt"), only_for=_for(WSD)
    ),
    "plateau_factor": Key(
        "float",
        0.1,
        "rate multiplier when the eval loss stops improving",
        low=0,
        high=1,
        low_inclusive=False,
        high_inclusive=False,
        only_for=_for(PLATEAU),
    ),
    "plateau_patience": Key(
        "int", 10, "evaluations without improvement before the rate drops", low=0, only_for=_for(PLATEAU)
    ),
}
# recipe key -> transformers' argument name, per scheduler
KWARGS = {
    "cosine_with_restarts": {"cycles": "num_cycles"},
    "polynomial": {"lr_end": "lr_end", "power": "power"},
    "inverse_sqrt": {"timescale": "timescale"},
    "cosine_with_min_lr": {"min_lr_ratio": "min_lr_rate"},
    WSD: {"min_lr_ratio": "min_lr_ratio", "decay_steps": "num_decay_steps", "decay_type": "decay_type"},
    PLATEAU: {"plateau_factor": "factor", "plateau_patience": "patience"},
}


def check(r: Mapping[str, Any], origins: Mapping[str, str], refuse: Callable[[str, str], None]) -> None:
    train, data = r["train"], r["data"]
    if train["warmup_steps"] is not None and train["warmup_ratio"] and "train.warmup_ratio" in origins:
        refuse(
            "train.warmup_steps",
            f"train.warmup_steps ({train['warmup_steps']}) and train.warmup_ratio ({train['warmup_ratio']}) both set "
            "the warmup. Fix: keep one of them (or set train.warmup_ratio: 0)",
        )
    if train["scheduler"] == WSD and train["decay_steps"] is None:
        refuse(
            "train.scheduler",
            "train.scheduler: warmup_stable_decay needs the length of its final decay. Fix: set train.decay_steps "
            "(e.g. 10% of the run's steps)",
        )
    if train["scheduler"] == PLATEAU and not data["eval_datasets"] and data["val_size"] == 0:
        refuse(
            "train.scheduler",
            "train.scheduler: reduce_lr_on_plateau lowers the rate when the eval loss stops improving, and there is "
            "no evaluation data. Fix: set data.eval_datasets or data.val_size > 0 (train.eval_steps sets how often), "
            "or choose another scheduler",
        )


def trainer_schedule(train: Mapping[str, Any]) -> dict:
    """TrainingArguments' schedule arguments for the recipe's train section."""
    kwargs = {hf: train[ours] for ours, hf in KWARGS.get(train["scheduler"], {}).items() if train[ours] is not None}
    warmup = train["warmup_ratio"] if train["warmup_steps"] is None else train["warmup_steps"]
    return {"lr_scheduler_type": train["scheduler"], "lr_scheduler_kwargs": kwargs, "warmup_steps": warmup}
