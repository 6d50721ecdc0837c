"""What a LLaMA-Factory YAML is, when it is not a training config: `launch import-lf` names it and the `launch`
command that does its job (chat/inference, merge/export, predict), or the recipe keys that express it (an
accelerate config), or what to do (LF's v1 format). Torch-free."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from launcher.recipe.import_lf import LF_TEMPLATES

# LF's v1 configs (llamafactory.v1) name sections of their own instead of v0's flat HF arguments
V1_KEYS = ("train_dataset", "dist_config", "model_class", "kernel_config", "quant_config", "peft_config")
ACCELERATE_KEYS = ("distributed_type", "compute_environment", "main_training_function")
# FSDP strategies that keep whole parameters between forward and backward: ZeRO-2's sharding (the fsdp engine
# here reshards every parameter after forward, as FULL_SHARD and FSDP2's reshard_after_forward do)
GRADIENT_SHARDING = ("SHARD_GRAD_OP", "HYBRID_SHARD_ZERO2")


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _template_flag(lf: dict) -> str:
    name = lf.get("template")
    return f" --template {_q(name)}" if name in LF_TEMPLATES else ""


def _fsdp(fsdp: dict) -> tuple[list[str], str]:
    """The engine keys for an accelerate FSDP config (FSDP1's fsdp_sharding_strategy or FSDP2's
    fsdp_reshard_after_forward), and what they run."""
    if str(fsdp.get("fsdp_version", 1)) == "2":
        strategy = "FULL_SHARD" if fsdp.get("fsdp_reshard_after_forward", True) else "SHARD_GRAD_OP"
    else:
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
    offload = bool(fsdp.get("fsdp_offload_params"))
    if strategy == "NO_SHARD":
        return ["distributed.engine: ddp"], "FSDP's NO_SHARD shards nothing: plain DDP"
    if strategy in GRADIENT_SHARDING:  # ZeRO-2 keeps parameters on the device: only the optimizer can move
        return (
            ["distributed.engine: deepspeed", "distributed.zero: 2", *(["distributed.offload: optimizer"] * offload)],
            f"FSDP's {strategy} keeps whole parameters between forward and backward, as DeepSpeed ZeRO-2 does "
            "(the fsdp engine here reshards after forward)",
        )
    keys = ["distributed.engine: fsdp", *(["distributed.offload: all"] * offload)]
    return keys, f"PyTorch FSDP2, each parameter sharded over all ranks ({strategy})"


def _accelerate(lf: dict, source: Path) -> str:
    machines = int(lf.get("num_machines") or 1)
    processes = int(lf.get("num_processes") or 1)
    kind = str(lf.get("distributed_type", "")).upper()
    keys = [f"distributed.nnodes: {machines}", f"distributed.nproc_per_node: {max(1, processes // machines)}"]
    if kind == "FSDP":
        engine_keys, engine = _fsdp(lf.get("fsdp_config") or {})
        keys += engine_keys
    elif kind == "DEEPSPEED":
        zero = (lf.get("deepspeed_config") or {}).get("zero_stage", 0)
        keys += ["distributed.engine: deepspeed", f"distributed.zero: {zero}"]
        engine = "DeepSpeed"
    else:
        keys += ["distributed.engine: ddp"]
        engine = "plain data parallel"
    precision = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}.get(str(lf.get("mixed_precision", "")))
    keys += [f"model.dtype: {precision}"] if precision else []
    keys += [f"distributed.master_addr: {lf['main_process_ip']}"] if lf.get("main_process_ip") else []
    keys += [f"distributed.master_port: {lf['main_process_port']}"] if lf.get("main_process_port") else []
    return (
        f"{source} is an accelerate config (distributed_type {kind or 'none'}), not a LLaMA-Factory training YAML: "
        f"`launch` starts the processes itself ({engine}). Fix: import the training YAML you run with it, then "
        f"set these recipe keys: {'; '.join(keys)} (distributed.launcher: accelerate if you want accelerate to "
        "start the ranks)"
    )


def _v1(lf: dict, source: Path) -> str:
    return (
        f"{source} looks like LLaMA-Factory's v1 config format (keys "
        f"{', '.join(k for k in ('model', *V1_KEYS) if k in lf)}); `launch import-lf` reads LF's v0 training "
        "YAMLs (model_name_or_path, stage, finetuning_type, dataset, ... as in LF's examples/train_lora/). Fix: "
        "import the v0 YAML of the same training, or write the recipe directly: model -> model.path, "
        "micro_batch_size -> train.micro_batch_size, learning_rate -> train.lr, cutoff_len -> data.cutoff_len, "
        "the datasets of train_dataset registered in data/dataset_info.json -> data.datasets (docs/import_lf.md)"
    )


def _export(lf: dict, source: Path) -> str:
    head = f"{source} is a LLaMA-Factory export config (llamafactory-cli export), not a training YAML"
    unsupported = []
    if lf.get("export_quantization_bit"):
        unsupported.append(
            "GPTQ export (export_quantization_bit) is not supported: quantize the merged model with a GPTQ tool"
        )
    if lf.get("export_hub_model_id"):
        unsupported.append("export_hub_model_id: upload the folder with `hf upload`")
    unsupported.append("LF's Ollama Modelfile is not written")
    if not lf.get("adapter_name_or_path"):
        return (
            f"{head}, with no adapter to merge. {'; '.join(unsupported)}. Fix: the model folder is usable as it is "
            "(`launch merge` folds a LoRA adapter into its base)"
        )
    shard = f" --shard-size {int(lf['export_size'])}GB" if str(lf.get("export_size", "")).isdigit() else ""
    command = (
        f"launch merge --base {_q(lf.get('model_name_or_path'))} --adapter {_q(lf['adapter_name_or_path'])} "
        f"--out {_q(lf.get('export_dir'))}{shard}"
    )
    return f"{head}. Fix: run `{command}` ({'; '.join(unsupported)})"


def _chat(lf: dict, source: Path) -> str:
    model = f"--model {_q(lf.get('model_name_or_path'))}"
    adapter = f" --adapter {_q(lf['adapter_name_or_path'])}" if lf.get("adapter_name_or_path") else ""
    trust = " --trust-remote-code" if lf.get("trust_remote_code") else ""
    serve_engine = " --engine vllm" if lf.get("infer_backend") == "vllm" else ""
    return (
        f"{source} is a LLaMA-Factory inference config (llamafactory-cli chat / webchat / api: no stage, dataset or "
        f"do_train), not a training YAML. Fix: chat in the terminal with `launch chat {model}{adapter}"
        f"{_template_flag(lf)}{trust}`, or serve an OpenAI-compatible API (LF's api) with "
        f"`launch serve {model}{adapter}{trust}{serve_engine}`"
    )


def _predict(lf: dict, source: Path) -> str:
    out = source.with_name(f"{source.stem}-eval.yaml")
    return (
        f"{source} is a LLaMA-Factory predict config (do_predict without do_train): it trains nothing. Fix: "
        f"`launch import-lf {_q(source)} --predict --out {_q(out)}`, then `launch eval {_q(out)}` (its "
        "eval_dataset are the prompts; generated_predictions.jsonl and LF's BLEU/ROUGE scores in output.dir/eval)"
    )


def _is_chat(lf: dict) -> bool:
    return not any(lf.get(key) for key in ("do_train", "do_predict", "do_eval", "stage", "dataset", "eval_dataset"))


KINDS: tuple[tuple[Callable[[dict], bool], Callable[[dict, Path], str]], ...] = (
    (lambda lf: any(key in lf for key in ACCELERATE_KEYS), _accelerate),
    (lambda lf: "model_name_or_path" not in lf and any(key in lf for key in ("model", *V1_KEYS)), _v1),
    (lambda lf: "export_dir" in lf, _export),
    (lambda lf: bool(lf.get("do_predict")) and not lf.get("do_train"), _predict),
    (_is_chat, _chat),
)


def not_training(lf: dict, source: Path, predict: bool = False) -> str | None:
    """Why `lf` is not an LF training config, with the command for what it is; None for a training config
    (and, with `predict`, for a predict config: `launch import-lf --predict` writes its eval recipe)."""
    for matches, message in KINDS:
        if matches(lf):
            return None if predict and message is _predict else message(lf, source)
    return None
