"""One rank's run as one object: `setup()`, `train()`, `save()`, sharing what each phase builds.

The order inside `setup` is the one that works (docs/architecture.md, worker/): the builtin model
materialized before anything distributed starts, TrainingArguments (which set up the process
group) before the model so ZeRO-3's zero.Init partitions it at load, and on CPU DeepSpeed's comm
layer wrapped around accelerate's plain gloo group.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import TAG
from launcher.methods import call_hook
from launcher.plan.trackers import TRACKERS, chosen
from launcher.registry import TRAINERS, engine_spec, resolve
from launcher.worker.elastic import isolate_restart_attempt
from launcher.worker.load import load_model, training_arguments
from launcher.worker.steps import refuse_less_than_one_step

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from launcher.monitoring.health import BadStepGuard
    from launcher.monitoring.interrupt import StopOnSignal
    from launcher.plan.types import Plan
    from launcher.recipe.types import Recipe


@dataclass
class Run:
    plan: Plan
    rank: int = 0
    terminal: bool = False  # rank 0's stdout is a terminal: progress bars may redraw
    width: int | None = None  # the terminal's columns, read before stdout became the rank-log pipe
    args: TrainingArguments | None = field(default=None, init=False)
    model: PreTrainedModel | None = field(default=None, init=False)  # with its method applied
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, init=False)
    callbacks: list = field(default_factory=list, init=False)  # what every stage's trainer gets
    stop: StopOnSignal | None = field(default=None, init=False)  # SIGTERM: checkpoint at the next step end
    guard: BadStepGuard | None = field(default=None, init=False)  # NaN/Inf steps: stop with a checkpoint
    tensorboard: Any = field(default=None, init=False)  # rank 0's TensorBoardCallback, when reported to
    trackers: list = field(default_factory=list, init=False)  # rank 0's wandb/mlflow/swanlab callbacks (offline)
    trainer: Trainer | None = field(default=None, init=False)

    @property
    def recipe(self) -> Recipe:
        return self.plan["recipe"]

    def setup(self) -> None:
        """Arguments (the process group is up after them), tokenizer, the model with its method, callbacks."""
        from transformers import set_seed

        from launcher.model.builtin import local_model_path

        if not (self.terminal and self.rank == 0):  # a redrawn bar ("Loading weights") is noise in a log or pipe
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        # before DeepSpeed is configured: builds on one device; model_dir: a ModelScope download (preflight.ensure_model)
        model_dir = self.plan.get("model_dir") or local_model_path(self.recipe["model"]["path"])
        isolate_restart_attempt(self.plan)  # torchrun restarts (distributed.max_restarts): fresh rendezvous keys
        self.args = training_arguments(self.plan)  # must precede model loading (ZeRO-3 zero.Init)
        _ = self.args.device  # sets up the process group now, so zero.Init sees the real world size
        engine = engine_spec(self.recipe["distributed"]["engine"])
        if engine.after_process_group:  # e.g. DeepSpeed's comm layer over the gloo group accelerate made on CPU
            resolve(engine.after_process_group)(self.plan)
        set_seed(self.recipe["train"]["seed"])
        self.tokenizer = self._tokenizer(model_dir)
        self.model = self._model(model_dir)
        self._callbacks()

    def _tokenizer(self, model_dir: str) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        trust = self.recipe["model"]["trust_remote_code"]
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _model(self, model_dir: str) -> PreTrainedModel:
        """The base model with the recipe's method (or an earlier stage's adapter), hooks and compiled layers."""
        from launcher.methods import apply_method, count_parameters

        adapter = self.recipe["model"]["adapter"]
        if adapter is not None:  # an earlier stage's LoRA adapter, trained further (docs/stages.md)
            model = self._continued_adapter(load_model(self.plan, model_dir), adapter)
        else:
            model = apply_method(load_model(self.plan, model_dir), self.recipe)
        call_hook(self.recipe, "after_apply", model, self.plan, self.rank)
        if self.plan["kernels"]["compile"]:
            from launcher.kernels.compile import compile_layers

            compile_layers(model)
        trainable, total = count_parameters(model)
        self._say(f"trainable params: {trainable:,} / {total:,} ({100 * trainable / total:.4f}%)")
        return model

    def _continued_adapter(self, base: PreTrainedModel, adapter: str) -> PreTrainedModel:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
        config = model.peft_config["default"]  # its own shape applies; say so rather than let method.* look used
        self._say(
            f"continuing adapter {adapter} (its own r={config.r}, alpha={config.lora_alpha}, targets "
            f"{config.target_modules}; method.rank/alpha/target apply to new adapters only)"
        )
        return model

    def _callbacks(self) -> None:
        from launcher.monitoring.interrupt import StopOnSignal
        from launcher.monitoring.throughput import FaultInjectionCallback, NoStepPastTheEnd
        from launcher.worker.resume_schedule import ScheduleFromTheResumedStep

        self.stop = StopOnSignal(self.rank)
        self.callbacks = [
            FaultInjectionCallback(self.rank),
            self.stop,
            NoStepPastTheEnd(),
            ScheduleFromTheResumedStep(),
        ]
        if self.rank == 0 and "tensorboard" in self.recipe["output"]["report_to"]:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            writer = SummaryWriter(log_dir=str(Path(self.plan["output_dir"]) / "runs"))
            writer.add_text("plan", "```\n" + json.dumps(self.plan, indent=2) + "\n```")
            self.tensorboard = TensorBoardCallback(tb_writer=writer)
        trackers = chosen(self.recipe["output"]["report_to"])
        if self.rank == 0 and trackers:  # plan["env"] already holds their offline settings (plan/trackers.py)
            import transformers.integrations

            self.trackers = [getattr(transformers.integrations, TRACKERS[name].callback)() for name in trackers]

    def train(self) -> None:
        """The stage's trainer over the callbacks and atomic checkpoints, then the training loop.
        A run stopped early (NaN/Inf steps, SIGTERM) raises its RunStopped: its checkpoint is saved."""
        from launcher.checkpoint.atomic import AtomicCheckpoints  # checkpoint-N appears only when complete
        from launcher.checkpoint.model_save import save_from_live_tensors
        from launcher.monitoring.throughput import RunAtItsEnd, install_monitoring
        from launcher.worker.optimizers import install as install_optimizer

        self.trainer, summary = TRAINERS[self.recipe["stage"]](
            self.plan, self.args, self.model, self.tokenizer, self.callbacks
        )
        call_hook(self.recipe, "prepare_trainer", self.trainer, self.recipe)
        install_optimizer(self.trainer, self.recipe)
        # before the loggers: it adds the scalars they write
        self.guard = install_monitoring(self.trainer, self.plan, self.rank, self.terminal, self.width)
        for logger in (self.tensorboard, *self.trackers):
            if logger is not None:
                self.trainer.add_callback(logger)
        resume_from, run_record = self._resume_point()
        save_total_limit = self.recipe["train"]["save_total_limit"]
        AtomicCheckpoints(self.plan["output_dir"], save_total_limit, self.rank, run_record).install(self.trainer)
        save_from_live_tensors(self.trainer, self.plan)
        engine = engine_spec(self.recipe["distributed"]["engine"])
        if engine.prepare_trainer:  # e.g. FSDP's shard check and its gathered final save
            resolve(engine.prepare_trainer)(self.trainer, self.plan, self.rank)
        self._report_data(summary)
        refuse_less_than_one_step(self.trainer, self.recipe["train"]["epochs"], self.recipe["train"]["max_steps"])
        try:
            self.trainer.train(resume_from_checkpoint=resume_from)
        except (
            RunAtItsEnd
        ) as end:  # a checkpoint at the run's last step (the final save crashed): its weights are final
            self.trainer.callback_handler.on_train_end(self.args, self.trainer.state, self.trainer.control)
            self._say(f"{end}; saving the final model")
        self._finish_trackers()
        self._raise_if_stopped()

    def _finish_trackers(self) -> None:
        """Close each tracker's run now that training ended, stopped runs included (rank 0 holds them)."""
        if self.trackers:
            for name in chosen(self.recipe["output"]["report_to"]):
                resolve(TRACKERS[name].finish)()

    def _resume_point(self) -> tuple[str | None, dict]:
        """Rank 0's choice, the same on every node: the checkpoint `launch` verified (the plan's resume_from), or
        after an elastic restart the newest one this run published; and the run its manifests record."""
        import torch.distributed as dist

        from launcher.checkpoint.resume import restart_checkpoint, run_identity

        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        choice: list[Any] = [
            restart_checkpoint(self.plan) if restarted else self.plan.get("resume_from"),
            run_identity(self.plan),
        ]
        if dist.is_available() and dist.is_initialized():  # nodes > 0 plan without launch's choice
            dist.broadcast_object_list(choice, src=0)
        if restarted and choice[0]:
            self._say(f"restart: resuming from {choice[0]}")
        return choice[0], choice[1]

    def _report_data(self, summary: dict) -> None:
        truncated = f", {summary['truncated']} truncated to cutoff" if "truncated" in summary else ""
        self._say(
            f"data: {summary['examples']} examples ({summary['eval_examples']} for eval), {summary['tokens']:,} tokens, "
            f"{summary['dropped']} dropped (no answer token within cutoff){truncated}"
        )
        if "packed_rows" in summary:
            efficiency = summary["packing_efficiency"]
            self._say(
                f"packing: {summary['packed_rows']} rows, efficiency {efficiency:.2%} (real tokens / row capacity)"
            )
            if self.tensorboard is not None:  # fixed for the run: one point, at step 0
                self.tensorboard.tb_writer.add_scalar("data/packing_efficiency", efficiency, 0)

    def _raise_if_stopped(self) -> None:
        assert self.guard is not None and self.stop is not None  # built by setup() and train()
        if self.guard.stopped:
            from launcher.monitoring.health import TrainingStopped

            raise TrainingStopped(self.guard.stop_message())
        if self.stop.stopped_at is not None:
            from launcher.monitoring.interrupt import StoppedBySignal

            raise StoppedBySignal(self.stop.message())

    def save(self) -> None:
        """The final model in output.dir: every rank (ZeRO-3 gathers shards; PEFT saves only the adapter), then
        rank 0 the trainer state, tokenizer and the method's after_save step."""
        assert self.trainer is not None and self.tokenizer is not None, "save() follows setup() and train()"
        self.trainer.save_model(self.plan["output_dir"])  # no copies of the model (checkpoint/model_save.py)
        if self.trainer.is_world_process_zero():
            self.tokenizer.save_pretrained(self.plan["output_dir"])
            call_hook(self.recipe, "after_save", self.plan)
            self.trainer.save_state()  # last: output.dir/trainer_state.json marks a complete final save (resume.py)
            self._say(f"saved to {self.plan['output_dir']}")

    def _say(self, line: str) -> None:
        """One `[launcher]` line from rank 0 (the others' would repeat it)."""
        if self.rank == 0:
            print(f"{TAG} {line}", flush=True)
