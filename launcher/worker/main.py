"""The worker every rank runs: read plan.json, build model, method, data and trainer, train, save.

Started by torchrun / accelerate / the deepspeed launcher as `python -m launcher.worker --plan FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from launcher.registry import SCORE_HEAD, TRAINERS, engine_spec, resolve, stage_spec
from launcher.util import quiet
from launcher.util.timeouts import recipe_timeout_s
from launcher.worker.elastic import isolate_restart_attempt


def training_arguments(plan: dict):
    """TrainingArguments from the plan; created before the model so ZeRO-3 partitions at load."""
    from transformers import TrainingArguments

    recipe = plan["recipe"]
    train, dist = recipe["train"], recipe["distributed"]
    on_cpu = plan["world"]["device"] == "cpu"
    has_eval = bool(recipe["data"]["eval_datasets"]) or recipe["data"]["val_size"] > 0
    return TrainingArguments(
        output_dir=plan["output_dir"],
        per_device_train_batch_size=train["micro_batch_size"],
        gradient_accumulation_steps=train["grad_accum"],
        learning_rate=train["lr"],
        num_train_epochs=train["epochs"],
        max_steps=train["max_steps"] or -1,
        lr_scheduler_type=train["scheduler"],
        warmup_steps=train["warmup_ratio"],
        weight_decay=train["weight_decay"],
        max_grad_norm=train["max_grad_norm"],
        optim=train["optimizer"],
        activation_checkpointing=train["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False},
        neftune_noise_alpha=train["neftune_alpha"],
        seed=train["seed"],
        data_seed=train["seed"],
        logging_steps=train["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=train["save_steps"],
        # with eval data (eval_datasets or val_size): every eval_steps, else at each epoch end
        eval_strategy=("steps" if train["eval_steps"] else "epoch") if has_eval else "no",
        eval_steps=train["eval_steps"],
        per_device_eval_batch_size=train["micro_batch_size"],
        bf16=plan["dtype"] == "bf16",
        fp16=plan["dtype"] == "fp16",
        **engine_spec(dist["engine"]).trainer_args(plan),
        ddp_timeout=int(recipe_timeout_s(plan["recipe"])),
        ddp_backend=plan["world"]["backend"],
        use_cpu=on_cpu,
        report_to=[],  # TensorBoard is added explicitly, after the throughput callback
        disable_tqdm=True,  # rank 0 shows launcher.monitoring.progress instead
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and caught by the bad-step guard)
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )


def load_model(plan: dict, model_dir: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from launcher.model.dtypes import torch_dtype

    recipe = plan["recipe"]
    dtype = torch_dtype(plan["dtype"])
    quant, extra = recipe["model"]["quantization"], {}
    if quant is not None:  # QLoRA: bitsandbytes quantizes the linear layers while loading
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quant["bits"] == 4,
            load_in_8bit=quant["bits"] == 8,
            bnb_4bit_quant_type=quant["type"],
            bnb_4bit_use_double_quant=quant["double_quant"],
            bnb_4bit_compute_dtype=dtype,
        )
        # no device_map: transformers quantizes onto the current device, which TrainingArguments set per rank
    auto = AutoModelForCausalLM
    if stage_spec(recipe["stage"]).head == SCORE_HEAD:  # a reward model: the LM with a one-score head on its last token
        auto, extra["num_labels"] = AutoModelForSequenceClassification, 1
    model = auto.from_pretrained(
        model_dir,
        dtype=dtype,
        attn_implementation=plan["kernels"]["attn"],
        trust_remote_code=recipe["model"]["trust_remote_code"],
        **extra,
    )
    if quant is not None and quant["bits"] == 4:  # evaluation runs no-grad forwards on it
        from launcher.compat import bnb_cpu_kernel_where_it_fits

        bnb_cpu_kernel_where_it_fits(model)
    if plan["kernels"]["loss"] == "liger":
        from launcher.kernels.compile import apply_liger

        apply_liger(model)
    return model


def resume_checkpoint(plan: dict, rank: int) -> tuple[str | None, dict]:
    """Rank 0's choice, the same on every node: the checkpoint `launch` verified (the plan's resume_from), or
    after an elastic restart the newest one this run published; and the run its manifests record."""
    import torch.distributed as dist

    from launcher.checkpoint.resume import restart_checkpoint, run_identity

    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    choice = [restart_checkpoint(plan) if restarted else plan.get("resume_from"), run_identity(plan)]
    if dist.is_available() and dist.is_initialized():  # nodes > 0 plan without launch's choice
        dist.broadcast_object_list(choice, src=0)
    if rank == 0 and restarted and choice[0]:
        print(f"[launcher] restart: resuming from {choice[0]}", flush=True)
    return choice[0], choice[1]


def run(plan: dict, terminal: bool = False, width: int | None = None) -> None:
    """One rank's run: load the model, build the callbacks, train and save."""
    rank = int(os.environ.get("RANK", "0"))
    if not (terminal and rank == 0):  # a redrawn bar (transformers' "Loading weights") is noise in a log or pipe
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    args, model, tokenizer = load(plan, rank)
    stop, callbacks, tensorboard, writer = make_callbacks(plan, rank)
    train_and_save(plan, args, model, tokenizer, rank, stop, callbacks, tensorboard, writer, terminal, width)


def load(plan: dict, rank: int) -> tuple:
    """(TrainingArguments, the model with its method applied, the tokenizer): the process group is up after it."""
    from transformers import AutoTokenizer, set_seed

    from launcher.methods import apply_method, call_hook, count_parameters
    from launcher.model.builtin import local_model_path

    recipe = plan["recipe"]
    # before DeepSpeed is configured: builds on one device; model_dir: a ModelScope download (preflight.ensure_model)
    model_dir = plan.get("model_dir") or local_model_path(recipe["model"]["path"])
    isolate_restart_attempt(plan)  # torchrun restarts (distributed.max_restarts): fresh rendezvous keys
    args = training_arguments(plan)  # must precede model loading (ZeRO-3 zero.Init)
    _ = args.device  # sets up the process group now, so zero.Init sees the real world size
    engine = engine_spec(recipe["distributed"]["engine"])
    if engine.after_process_group:  # e.g. DeepSpeed's comm layer over the gloo group accelerate made on CPU
        resolve(engine.after_process_group)(plan)
    set_seed(recipe["train"]["seed"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=recipe["model"]["trust_remote_code"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if recipe["model"]["adapter"] is not None:  # an earlier stage's LoRA adapter, trained further (docs/stages.md)
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(plan, model_dir), recipe["model"]["adapter"], is_trainable=True)
        if rank == 0:  # its own shape applies; say so rather than let method.rank/alpha/target look used
            config = model.peft_config["default"]
            print(
                f"[launcher] continuing adapter {recipe['model']['adapter']} (its own r={config.r}, "
                f"alpha={config.lora_alpha}, targets {config.target_modules}; method.rank/alpha/target "
                "apply to new adapters only)",
                flush=True,
            )
    else:
        model = apply_method(load_model(plan, model_dir), recipe)
    call_hook(recipe, "after_apply", model, plan, rank)
    if plan["kernels"]["compile"]:
        from launcher.kernels.compile import compile_layers

        compile_layers(model)
    trainable, total = count_parameters(model)
    if rank == 0:
        print(f"[launcher] trainable params: {trainable:,} / {total:,} ({100 * trainable / total:.4f}%)", flush=True)
    return args, model, tokenizer


def make_callbacks(plan: dict, rank: int) -> tuple:
    """(the SIGTERM stopper, the callbacks every stage gets, TensorBoard's callback and writer or None, None)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from launcher.monitoring.interrupt import StopOnSignal
    from launcher.monitoring.throughput import FaultInjectionCallback, NoStepPastTheEnd

    recipe = plan["recipe"]
    stop = StopOnSignal(rank)  # SIGTERM: checkpoint at the next step end, then leave
    callbacks = [FaultInjectionCallback(rank), stop, NoStepPastTheEnd()]
    if rank == 0 and "tensorboard" in recipe["output"]["report_to"]:
        writer = SummaryWriter(log_dir=str(Path(plan["output_dir"]) / "runs"))
        writer.add_text("plan", "```\n" + json.dumps(plan, indent=2) + "\n```")
        tensorboard = TensorBoardCallback(tb_writer=writer)
    else:
        tensorboard = writer = None
    return stop, callbacks, tensorboard, writer


def train_and_save(
    plan: dict,
    args,
    model,
    tokenizer,
    rank: int,
    stop,
    callbacks: list,
    tensorboard,
    writer,
    terminal: bool,
    width: int | None,
) -> None:
    """The stage's trainer over the callbacks, checkpoints, training, then the final model in output.dir."""
    from launcher.methods import call_hook
    from launcher.monitoring.interrupt import StoppedBySignal
    from launcher.monitoring.throughput import RunAtItsEnd, install_monitoring

    recipe = plan["recipe"]
    trainer, summary = TRAINERS[recipe["stage"]](plan, args, model, tokenizer, callbacks)
    call_hook(recipe, "prepare_trainer", trainer, recipe)
    guard = install_monitoring(trainer, plan, rank, terminal, width)  # before TensorBoard: it adds scalars
    if tensorboard is not None:
        trainer.add_callback(tensorboard)
    from launcher.checkpoint.atomic import AtomicCheckpoints  # checkpoint-N appears only when complete
    from launcher.checkpoint.model_save import save_from_live_tensors

    resume_from, run_record = resume_checkpoint(plan, rank)
    AtomicCheckpoints(plan["output_dir"], recipe["train"]["save_total_limit"], rank, run_record).install(trainer)
    save_from_live_tensors(trainer, plan)
    engine = engine_spec(recipe["distributed"]["engine"])
    if engine.prepare_trainer:  # e.g. FSDP's shard check and its gathered final save
        resolve(engine.prepare_trainer)(trainer, plan, rank)
    if rank == 0:
        print(
            f"[launcher] data: {summary['examples']} examples ({summary['eval_examples']} for eval), "
            f"{summary['tokens']:,} tokens, "
            f"{summary['dropped']} dropped (no answer token within cutoff)"
            + (f", {summary['truncated']} truncated to cutoff" if "truncated" in summary else ""),
            flush=True,
        )
        if "packed_rows" in summary:
            print(
                f"[launcher] packing: {summary['packed_rows']} rows, efficiency {summary['packing_efficiency']:.2%} "
                "(real tokens / row capacity)",
                flush=True,
            )
            if tensorboard is not None:  # fixed for the run: one point, at step 0
                writer.add_scalar("data/packing_efficiency", summary["packing_efficiency"], 0)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except RunAtItsEnd as end:  # a checkpoint at the run's last step (the final save crashed): its weights are final
        trainer.callback_handler.on_train_end(args, trainer.state, trainer.control)
        if rank == 0:
            print(f"[launcher] {end}; saving the final model", flush=True)
    if guard.stopped:
        from launcher.monitoring.health import TrainingStopped

        raise TrainingStopped(guard.stop_message())
    if stop.stopped_at is not None:
        raise StoppedBySignal(stop.message())
    trainer.save_model(
        plan["output_dir"]
    )  # gathers ZeRO-3 shards; PEFT saves only the adapter; no copies (model_save.py)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(plan["output_dir"])
        call_hook(recipe, "after_save", plan)
        trainer.save_state()  # last: output.dir/trainer_state.json marks a complete final save (checkpoint/resume.py)
        print(f"[launcher] saved to {plan['output_dir']}", flush=True)


quiet.install()  # known-harmless dependency messages (launcher/util/quiet.py), before anything logs them


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True, help="plan.json written by `launch`")
    parsed = parser.parse_args(argv)
    from launcher.errors import TAG, LauncherError, RunStopped, worker_error_line
    from launcher.plan.files import read_own

    code = 0
    try:
        plan = json.loads(read_own(parsed.plan))  # not our plan (RecipeError): run nothing from it
        from launcher.worker.lean_imports import skip_unused_libraries

        skip_unused_libraries(plan["recipe"])
        from launcher.monitoring.ranklog import start_rank_log

        width = shutil.get_terminal_size((0, 0)).columns or None  # before stdout becomes the rank-log pipe
        terminal = start_rank_log(plan["output_dir"], int(os.environ.get("RANK", "0")))
        from launcher.backends.lifeline import watch_launcher

        watch_launcher()  # this rank ends with the launcher, even when nobody is left to stop it
        run(plan, terminal, width)
    except LauncherError as err:  # bad input (plan, data, a method that does not fit the model): one line, no traceback
        print(worker_error_line(err), file=sys.stderr, flush=True)
        raise SystemExit(err.code) from None
    except RunStopped as err:  # NaN/Inf steps (exit 3) or SIGTERM (143): checkpoint saved
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{TAG} {err}", file=sys.stderr, flush=True)
        code = err.code
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing the final files
    # Everything is saved and flushed now: leave without tearing the process group and the
    # interpreter down. That teardown sometimes aborts in a C++ destructor ("terminate called
    # without an active exception", seen on CPU + gloo) and turned finished runs into failures.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
