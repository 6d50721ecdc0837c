"""The training options LF's WebUI lists: every transformers scheduler with its arguments, train.warmup_steps beside
warmup_ratio, an eval batch size, data.max_eval_samples. The oracle of each schedule is transformers' own schedule
function called directly with those arguments: the Trainer built from the recipe must step the same rates."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from launcher.data.splits import train_and_eval
from launcher.recipe.load import RecipeError, load_recipe
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.unit


@dataclass
class Rows:
    rows: list[dict]


TINY = ROOT / "recipes" / "sft_tiny.yaml"
STEPS, LR = 20, 5.0e-3  # sft_tiny's lr; warmup_ratio 0.05 -> 1 warmup step of 20


def _trainer_rates(overrides: list[str]) -> list[float]:
    """The rate of each of STEPS steps as the Trainer schedules it from the recipe's TrainingArguments."""
    from transformers import Trainer, TrainingArguments

    from launcher.recipe.schedule import trainer_schedule

    recipe = load_recipe(TINY, ["train.max_steps=20", *overrides])
    args = TrainingArguments(
        output_dir="unused", learning_rate=LR, max_steps=STEPS, report_to=[], **trainer_schedule(recipe["train"])
    )
    trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
    trainer.create_optimizer_and_scheduler(STEPS)
    return _rates(trainer.optimizer, trainer.lr_scheduler)


def _rates(optimizer, schedule) -> list[float]:
    rates = []
    for _ in range(STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def _oracle(build, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    return _rates(optimizer, build(optimizer, **kwargs))


def _cases():
    import transformers.optimization as hf

    return [
        (
            ["train.scheduler=linear"],
            hf.get_linear_schedule_with_warmup,
            {"num_warmup_steps": 1, "num_training_steps": STEPS},
        ),
        (
            ["train.scheduler=cosine_with_restarts", "train.cycles=3"],
            hf.get_cosine_with_hard_restarts_schedule_with_warmup,
            {"num_warmup_steps": 1, "num_training_steps": STEPS, "num_cycles": 3},
        ),
        (
            ["train.scheduler=polynomial", "train.lr_end=1e-4", "train.power=2"],
            hf.get_polynomial_decay_schedule_with_warmup,
            {"num_warmup_steps": 1, "num_training_steps": STEPS, "lr_end": 1e-4, "power": 2.0},
        ),
        (["train.scheduler=constant"], hf.get_constant_schedule, {}),
        (
            ["train.scheduler=constant_with_warmup", "train.warmup_ratio=0", "train.warmup_steps=4"],
            hf.get_constant_schedule_with_warmup,
            {"num_warmup_steps": 4},
        ),
        (
            ["train.scheduler=inverse_sqrt", "train.timescale=3"],
            hf.get_inverse_sqrt_schedule,
            {"num_warmup_steps": 1, "timescale": 3},
        ),
        (
            ["train.scheduler=cosine_with_min_lr", "train.min_lr_ratio=0.1"],
            hf.get_cosine_with_min_lr_schedule_with_warmup,
            {"num_warmup_steps": 1, "num_training_steps": STEPS, "min_lr_rate": 0.1},
        ),
        (
            ["train.scheduler=warmup_stable_decay", "train.decay_steps=5", "train.decay_type=linear"],
            hf.get_wsd_schedule,
            {"num_warmup_steps": 1, "num_training_steps": STEPS, "num_decay_steps": 5, "decay_type": "linear"},
        ),
    ]


@pytest.mark.parametrize("index", range(8))
def test_each_scheduler_steps_as_transformers_schedule_with_its_arguments(index):
    overrides, build, kwargs = _cases()[index]
    expected = _oracle(build, **kwargs)
    assert _trainer_rates(overrides) == pytest.approx(expected, rel=1e-9)
    assert len(set(expected)) > 1 or build.__name__ == "get_constant_schedule"  # the arguments shape the rates


def test_reduce_lr_on_plateau_gets_its_factor_and_patience():
    from transformers import TrainingArguments

    from launcher.recipe.schedule import trainer_schedule

    recipe = load_recipe(
        TINY,
        [
            "train.scheduler=reduce_lr_on_plateau",
            "data.val_size=0.1",
            "train.plateau_factor=0.5",
            "train.plateau_patience=2",
        ],
    )
    args = TrainingArguments(
        output_dir="unused", eval_strategy="epoch", report_to=[], **trainer_schedule(recipe["train"])
    )
    assert args.lr_scheduler_kwargs == {"factor": 0.5, "patience": 2}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.warmup_steps=5"], "train.warmup_steps (5) and train.warmup_ratio (0.05) both set the warmup"),
        (["train.scheduler=warmup_stable_decay"], "Fix: set train.decay_steps"),
        (["train.scheduler=reduce_lr_on_plateau"], "no evaluation data. Fix: set data.eval_datasets or data.val_size"),
        (["train.cycles=2"], "train.cycles is only valid with train.scheduler: cosine_with_restarts"),
        (["train.scheduler=onecycle"], "train.scheduler"),
    ],
)
def test_schedule_settings_that_cannot_run_are_refused(overrides, needle):
    with pytest.raises(RecipeError, match="Fix") as refused:
        load_recipe(TINY, overrides)
    assert needle in str(refused.value)


def test_eval_batch_size_reaches_the_trainer_and_defaults_to_the_micro_batch():
    from launcher.worker.load import training_arguments

    def eval_batch(*overrides: str) -> int:
        recipe = load_recipe(TINY, ["data.val_size=0.1", "distributed.engine=ddp", *overrides])
        plan = {
            "recipe": recipe,
            "output_dir": "unused",
            "dtype": "fp32",
            "world": {"device": "cpu", "backend": "gloo"},
        }
        return training_arguments(plan).per_device_eval_batch_size

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        assert eval_batch() == 4 and eval_batch("train.eval_batch_size=16") == 16
    finally:
        dist.destroy_process_group()


def test_max_eval_samples_caps_the_evaluation_rows():
    recipe = load_recipe(TINY, ["data.eval_datasets=[b]", "data.max_eval_samples=3"])
    rows = {"demo_sft": [{"i": i} for i in range(10)], "b": [{"j": j} for j in range(7)]}
    _, train_rows, eval_rows = train_and_eval(recipe, lambda names: Rows(rows[names[0]]), str)
    assert train_rows == rows["demo_sft"] and eval_rows == rows["b"][:3]
