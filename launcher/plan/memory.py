"""Memory planner: per-device memory of a recipe under each ZeRO stage / offload option.

Torch-free arithmetic over the model's shape (its config.json, or a table of common hub models
so real recipes plan offline): every parameter tensor is listed with its shape, the method
decides which of them train (and adds adapter tensors), and bytes follow from the precision,
the quantization, the optimizer and how ZeRO partitions each kind of state. Formulas and
assumptions: docs/monitoring.md, "Memory planner"; measured against real runs in
bench/methods.py (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from launcher.kernels.choice import loss_choice
from launcher.model.shape import LAYOUTS, Shape, Tensor, base_tensors, model_shape
from launcher.recipe.optimizers import ALL_LINEAR, LOW_RANK_SECTIONS
from launcher.registry import engine_spec, method_spec, stage_spec

if TYPE_CHECKING:
    from launcher.plan.types import Memory, MemoryOption
    from launcher.recipe.types import MethodSection, QuantizationSection, Recipe, TrainSection

GIB = 1024**3
LAYER = re.compile(r"layers\.\d+\.")  # a decoder layer's parameter names (BAdam's blocks)
# Fixed per-process cost outside the model's tensors. GPU: CUDA context, kernels and allocator
# slack. CPU: the resident Python + torch + transformers + DeepSpeed runtime of one rank, the
# tokenized data and the Trainer (anonymous RSS of a rank of the tiny recipe less its
# tensors, measured by bench/methods.py).
OVERHEAD_GB = {"cuda": 1.0, "cpu": 0.33}
# stage3_max_live_parameters of ds_configs/zero3*.json (tests/plan/test_memory.py keeps them equal)
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000


def parameter_split(shape: Shape, method: MethodSection) -> tuple[list[Tensor], list[Tensor]]:
    """(frozen, trainable) tensors of the model the method makes ready to train (its spec's `split`)."""
    return method_spec(method["name"]).split(shape, base_tensors(shape), method)


def parameter_counts(shape: Shape, method: MethodSection) -> tuple[int, int]:
    """(trainable, total) parameters, as the worker's count_parameters reports them."""
    frozen, trainable = parameter_split(shape, method)
    n_trainable = sum(t.numel for t in trainable)
    return n_trainable, n_trainable + sum(t.numel for t in frozen)


def _quantized_bytes(t: Tensor, quant: QuantizationSection) -> float:
    """bitsandbytes storage: packed k-bit weights plus absmax constants (fp32 per block of 64;
    double quant: 8-bit per block plus fp32 per 256 blocks). 8-bit: int8 plus an fp32 scale per row."""
    if quant["bits"] == 8:
        return t.numel + 4 * t.rows
    absmax = t.numel / 64 * (1 + 4 / 256) if quant["double_quant"] else t.numel / 64 * 4
    return t.numel / 2 + absmax


def _low_rank_bytes(t: Tensor, train: TrainSection) -> float:
    """GaLore's / APOLLO's state of a weight: two fp32 moments of its (larger side x rank) projection and the
    fp32 (rank x smaller side) projector, where train.galore/apollo.target names it; AdamW's otherwise."""
    cfg = train[LOW_RANK_SECTIONS[train["optimizer"]]]  # type: ignore[literal-required]
    module = t.name.rsplit(".", 1)[0]
    if not (t.linear and t.cols > 1 and (cfg["target"] == [ALL_LINEAR] or any(x in module for x in cfg["target"]))):
        return 8 * t.numel
    rank = min(cfg["rank"], t.rows, t.cols)
    return 4 * rank * (2 * max(t.rows, t.cols) + min(t.rows, t.cols))


def _optimizer_bytes(trainable: list[Tensor], train: TrainSection) -> float:
    """Optimizer states (without the fp32 master copy). AdamW: two fp32 moments; 8-bit AdamW:
    two 8-bit moments (plus fp32 absmax per block of 2048); Adafactor (no momentum, as
    transformers sets it): a factored fp32 second moment, rows + cols per matrix; GaLore/APOLLO: AdamW on the
    projections; Adam-mini: the first moment, one second moment per row; Muon: one fp32 momentum on the decoder's
    matrices, AdamW on the rest; BAdam: AdamW and an fp32 copy of the largest decoder layer only.
    tests/worker/test_optimizer_steps.py compares them with the states the optimizers hold after two steps."""
    optimizer = train["optimizer"]
    n = sum(t.numel for t in trainable)
    if optimizer == "adafactor":
        return sum(4 * (t.rows + t.cols if t.cols > 1 else t.rows) for t in trainable)
    if optimizer in LOW_RANK_SECTIONS:
        return sum(_low_rank_bytes(t, train) for t in trainable)
    if optimizer == "adam_mini":
        return 4 * (n + sum(t.rows for t in trainable))
    if optimizer == "muon":
        return sum((4 if t.linear and t.cols > 1 else 8) * t.numel for t in trainable)
    if optimizer == "badam":
        layers: dict[str, int] = {}
        for t in trainable:
            layer = LAYER.search(t.name)
            if layer:
                layers[layer.group(0)] = layers.get(layer.group(0), 0) + t.numel
        return 12 * max(layers.values(), default=n)
    return n * 2 * (1 + 4 / 2048) if optimizer in ("adamw_8bit", "paged_adamw_8bit") else n * 8


# tokens of logits the chunked loss computes at a time (launcher/kernels/loss.py: CHUNK_TOKENS; tests keep them equal)
CHUNKED_LOSS_TOKENS = 512


def loss_bytes(shape: Shape, tokens: float, loss: str) -> float:
    """Peak bytes of the loss over a micro batch of `tokens` tokens. Plain (transformers' loss): in backward the
    fp32 log-softmax it saved, the gradient of that and the gradient of the logits, 12 bytes per logit (in
    forward the logits, an fp32 copy of bf16 ones and the log-softmax: at most 10; the Trainer drops the model's
    outputs, logits included, before backward). The chunked loss (kernels/loss.py) holds one fp32 slice of
    CHUNKED_LOSS_TOKENS tokens' logits. liger-kernel's fused loss sizes its chunks so that their logits are about
    as many elements as the hidden states (not measured here: CUDA only)."""
    if loss == "chunked":  # its slice's logits become their own gradient in place: one fp32 buffer
        return 4 * min(tokens, CHUNKED_LOSS_TOKENS) * shape.vocab
    if loss == "liger":
        return 12 * tokens * shape.hidden
    return 12 * tokens * shape.vocab


def activation_bytes(
    shape: Shape, tokens: float, elem: int, checkpointing: bool, attn: str, seq: int, loss: str
) -> float:
    """Peak bytes for backward per micro batch of `tokens` tokens (sequences of `seq`).
    Per layer and token, elements saved by a Llama/Qwen2 layer: the two RMSNorms (input,
    normalised, output: 3h each), rotated q and k, v, k/v repeated to all heads (sdpa with a
    padding mask does not use native GQA), the attention output (h), and in the MLP gate,
    up, silu(gate) and their product (4 x intermediate). eager attention also keeps the
    scores and probabilities (2 x heads x seq). The final norm keeps 3h. The loss (loss_bytes) peaks
    first in backward, on top of everything saved; with checkpointing only each layer's input is saved,
    and the one layer recomputed during backward comes after the loss's memory is freed, so the peak
    is the larger of the two. Measured by bench/parallelism.py --sp (15-30k tokens, fp32)."""
    h = shape.hidden
    per_layer = 6 * h + shape.q_dim + 2 * shape.kv_dim + 2 * shape.q_dim + shape.q_dim + 4 * shape.intermediate
    if attn == "eager":
        per_layer += 2 * shape.heads * seq
    logits = loss_bytes(shape, tokens, loss)
    if checkpointing:
        return tokens * elem * (shape.layers * h + 3 * h) + max(tokens * elem * per_layer, logits)
    return tokens * elem * (shape.layers * per_layer + 3 * h) + logits


def _element_bytes(dtype: str) -> int:
    return 2 if dtype in ("bf16", "fp16") else 4


def rollout_bytes(recipe: Recipe, shape: Shape, elem: int, trainable: list[Tensor], frozen: list[Tensor]) -> dict:
    """Stage grpo's rollout, per device: the generation KV cache (each rank samples its micro batch x grad_accum
    completions at once, TRL's steps_per_generation, each up to cutoff_len prompt + max_new_tokens tokens; keys
    and values of every layer) and the reference model train.kl_coef > 0 needs: none for a new LoRA adapter (the
    adapter disabled), a copy of the adapter for a continued one or PiSSA, a whole copy for full or freeze."""
    data, train, method = recipe["data"], recipe["train"], recipe["method"]
    sequences = train["micro_batch_size"] * train["grad_accum"]
    tokens = data["cutoff_len"] + train["max_new_tokens"]
    kv_cache = sequences * tokens * shape.layers * 2 * shape.kv_dim * elem
    if train["kl_coef"] == 0:
        reference, why = 0, "none: train.kl_coef is 0"
    elif method["name"] != "lora":
        reference, why = elem * sum(t.numel for t in (*frozen, *trainable)), f"a copy of the model ({method['name']})"
    elif recipe["model"]["adapter"] is not None or method.get("variant") == "pissa":
        reference, why = elem * sum(t.numel for t in trainable), "a copy of the adapter"
    else:
        reference, why = 0, "none: the new adapter disabled"
    return {"sequences": sequences, "tokens": tokens, "kv_cache": kv_cache, "reference": reference, "why": why}


def adam_temporary(trainable: list[Tensor], deepspeed: bool, foreach: bool) -> int:
    """Elements of the sqrt(second moment) temporary torch's AdamW allocates in its step, before the partition
    divides it as it divides the optimizer state. Every parameter at once where it runs foreach (torch's default
    on CUDA) or on DeepSpeed's flat fp32 buffers (one tensor per step; measured by bench/methods.py); elsewhere
    (CPU tensors, where torch turns foreach off) parameter by parameter, so only the largest (under FSDP2 its
    shard) at a time: a 78M-parameter full FSDP2 run on CPU peaked 17% below an estimate counting all of them."""
    if deepspeed or foreach:
        return sum(t.numel for t in trainable)
    return max((t.numel for t in trainable), default=0)


@dataclass
class Option:
    zero: int
    offload: str
    label: str
    params_gb: float = 0.0
    grads_gb: float = 0.0
    optimizer_gb: float = 0.0
    activations_gb: float = 0.0
    overhead_gb: float = 0.0
    rollout_gb: float = 0.0  # stage grpo: generation KV cache and reference model (rollout_bytes)
    host_gb: float = 0.0  # per process, offloaded states in host memory
    refused: str | None = None  # the recipe validation's reason, when this option cannot run
    fits: bool | None = None

    @property
    def total_gb(self) -> float:
        return (
            self.params_gb
            + self.grads_gb
            + self.optimizer_gb
            + self.activations_gb
            + self.overhead_gb
            + self.rollout_gb
        )

    def as_json(self) -> MemoryOption:
        """The plan's record of this option: its fields, its label and its total."""
        return cast("MemoryOption", {**self.__dict__, "total_gb": self.total_gb})


def estimate_option(
    recipe: Recipe, shape: Shape, zero: int, offload: str, world_size: int, device: str, dtype: str
) -> Option:
    """Per-device memory of one ZeRO stage / offload choice (see docs/monitoring.md);
    dtype: the plan's resolved precision (bf16 | fp16 | fp32)."""
    model, train, dist = recipe["model"], recipe["train"], recipe["distributed"]
    elem = _element_bytes(dtype)
    frozen, trainable = parameter_split(shape, recipe["method"])
    quant = model["quantization"]
    if quant is not None:  # k-bit linears; prepare_model_for_kbit_training upcasts the rest to fp32
        frozen_bytes = sum(_quantized_bytes(t, quant) if t.linear else 4 * t.numel for t in frozen)
    else:
        frozen_bytes = elem * sum(t.numel for t in frozen)
    n_train = sum(t.numel for t in trainable)
    engine = engine_spec(dist["engine"])
    deepspeed = engine.master_weights
    label = engine.label(zero, offload)
    # the partitioning it matches: FSDP2 shards parameters, gradients and optimizer state as ZeRO-3 does
    level = 3 if engine.shards_all else zero
    # DeepSpeed's ZeRO optimizers and its bf16 optimizer keep an fp32 master copy of what trains
    master = 4 * n_train if deepspeed and (level > 0 or elem == 2) else 0
    states = master + _optimizer_bytes(trainable, train)
    # FSDP2 under mixed precision upcasts what trains to fp32 (accelerate); its shards are the master copy
    train_elem = 4 if engine.shards_all else elem
    params, grads = frozen_bytes + train_elem * n_train, train_elem * n_train
    if deepspeed and level == 0 and elem == 2:  # DeepSpeed's bf16 optimizer accumulates grads in fp32
        grads += 4 * n_train
    w = world_size
    part = w if level >= 1 else 1  # what the optimizer step sees of the trainable parameters
    if train["optimizer"] == "adamw_torch":  # torch's AdamW: a temporary sqrt of the second moment
        states += 4 * adam_temporary(trainable, deepspeed, foreach=device == "cuda" and offload == "none")
    step_grads = 4 * n_train if deepspeed and level >= 1 else 0  # ZeRO's flat fp32 copy of the gradient partition
    opt = Option(zero, offload, label)
    opt.optimizer_gb = states / part
    opt.grads_gb = (grads / w if level >= 2 else grads) + step_grads / part
    # transformers skips zero.Init for k-bit models: each rank loads the whole quantized base
    # before DeepSpeed partitions it, so that is the peak
    opt.params_gb = params / w if level == 3 and quant is None else params
    if level == 3 and not deepspeed:  # FSDP2 gathers one unit at a time: the outer weights and two decoder layers
        outer = sum(t.numel for t in LAYOUTS[shape.family].outer(shape))
        opt.params_gb += elem * (outer + 2 * (sum(t.numel for t in frozen) + n_train - outer) / shape.layers)
    elif level == 3:  # gathered parameters stay resident up to stage3_max_live_parameters, plus the prefetch bucket;
        # k-bit linears are counted whole above, so gathering adds nothing for them
        gathered = sum(t.numel for t in frozen if quant is None or not t.linear) + n_train
        opt.params_gb += elem * (min(gathered, ZERO3_MAX_LIVE_PARAMETERS) + 0.9 * shape.hidden**2)
    if level >= 2 and deepspeed:  # gradient reduce bucket
        opt.grads_gb += elem * shape.hidden**2
    if offload != "none":  # optimizer states and gradient partitions live on the host (DeepSpeed's CPU Adam)
        states -= 4 * n_train if deepspeed and train["optimizer"] == "adamw_torch" else 0
        opt.host_gb += states / part + (grads + step_grads) / w
        opt.grads_gb -= (grads / w if level >= 2 else 0) + step_grads / part
        opt.optimizer_gb = 0.0
    if offload == "all":
        opt.host_gb += params / w
        opt.params_gb -= params / w
    seq = recipe["data"]["cutoff_len"]
    loss = loss_choice(recipe, device == "cuda", shape.vocab)[0]  # the kernel the plan picks at this degree
    # Ulysses: each rank keeps 1/sp of every sequence's activations and logits (eager's scores: heads / sp of
    # them over the whole sequence, the same bytes per local token)
    local_tokens = train["micro_batch_size"] * seq / int(dist["sequence_parallel"])  # resolved: no auto here
    opt.activations_gb = activation_bytes(
        shape, local_tokens, elem, train["gradient_checkpointing"], model["attn"], seq, loss
    )
    opt.overhead_gb = OVERHEAD_GB[device] * GIB
    if recipe["stage"] == "grpo":  # the reference is partitioned as the model is under ZeRO-3 (TRL prepares it alike)
        rollout = rollout_bytes(recipe, shape, elem, trainable, frozen)
        opt.rollout_gb = rollout["kv_cache"] + rollout["reference"] / (w if level == 3 else 1)
    if device == "cpu":  # the host is the device: offloading moves nothing off it
        opt.params_gb, opt.host_gb = opt.params_gb + opt.host_gb, 0.0
    for name in ("params_gb", "grads_gb", "optimizer_gb", "activations_gb", "overhead_gb", "rollout_gb", "host_gb"):
        setattr(opt, name, getattr(opt, name) / GIB)
    return opt


def estimate(
    recipe: Recipe,
    world_size: int,
    device: str,
    dtype: str,
    device_memory_gb: float | None,
    memory_source: str,
    refusal,
    host_memory_gb: float | None,
) -> Memory:
    """The planner's memory section: model, parameter counts, and every option with its fit.
    `refusal(zero, offload)` returns why the recipe cannot run with that option, or None.
    host_memory_gb: host RAM per process, which offloaded states must fit too (None: unchecked)."""
    shape, source = model_shape(recipe["model"]["path"])
    out: Memory = {
        "model": recipe["model"]["path"],
        "shape_source": source,
        "device": device,
        "device_memory_gb": device_memory_gb,
        "device_memory_source": memory_source,
        "host_memory_gb": host_memory_gb,
        "world_size": world_size,
        "sequence_parallel": int(recipe["distributed"]["sequence_parallel"]),
        "options": [],
    }
    if shape is None:
        return out
    trainable, total = parameter_counts(shape, recipe["method"])
    out["shape"] = shape.__dict__
    out["params_total"], out["params_trainable"] = total, trainable
    if recipe["stage"] == "grpo":
        frozen, train_tensors = parameter_split(shape, recipe["method"])
        rollout = rollout_bytes(recipe, shape, _element_bytes(dtype), train_tensors, frozen)
        out["rollout"] = {**rollout, "kv_cache": rollout["kv_cache"] / GIB, "reference": rollout["reference"] / GIB}
    for zero, offload in engine_spec(recipe["distributed"]["engine"]).memory_options(recipe["distributed"]):
        opt = estimate_option(recipe, shape, zero, offload, world_size, device, dtype)
        opt.refused = refusal(zero, offload)
        if device_memory_gb is not None and opt.refused is None:
            opt.fits = opt.total_gb <= device_memory_gb and (host_memory_gb is None or opt.host_gb <= host_memory_gb)
        out["options"].append(opt.as_json())
    return out


def pick_auto(memory: Memory) -> MemoryOption | None:
    """The first option in the engine's order (memory_options) that is allowed and fits, or None."""
    return next((o for o in memory["options"] if o["fits"]), None)


def fit_refusal(memory: Memory, recipe: Recipe) -> str | None:
    """Why training refuses the recipe's option (the planner says it does not fit), or None:
    fits, unknown, or forced with distributed.force_memory."""
    dist, train = recipe["distributed"], recipe["train"]
    option = next((o for o in memory["options"] if (o["zero"], o["offload"]) == (dist["zero"], dist["offload"])), None)
    if dist["force_memory"] or option is None or option["fits"] is not False:
        return None
    device_gb = memory["device_memory_gb"]  # known: an option only fits or not against a known memory
    if (
        device_gb is not None and option["total_gb"] <= device_gb
    ):  # the device fits; the offloaded states do not fit the host
        need, budget = f"{option['host_gb']:.1f} GiB of host RAM per process", f"{memory['host_memory_gb']:.1f} GiB"
    else:
        need = f"{option['total_gb']:.1f} GiB per {memory['device']} process"
        budget = f"{memory['device_memory_gb']:.1f} GiB ({memory['device_memory_source']})"
    fitting = [o["label"] for o in memory["options"] if o["fits"]]
    fixes = [f"an option that fits ({', '.join(fitting[:3])}; or distributed.zero: auto)"] if fitting else []
    fixes += ["more devices (distributed.nproc_per_node, distributed.nnodes)"]
    if recipe["method"]["name"] == "full":
        fixes.append("method.name: lora")
    elif recipe["method"]["name"] == "lora" and recipe["model"]["quantization"] is None:
        fixes.append("model.quantization: {bits: 4} (QLoRA)")
    fixes.append(
        f"a smaller train.micro_batch_size (now {train['micro_batch_size']}) or data.cutoff_len "
        f"(now {recipe['data']['cutoff_len']})"
    )
    if not train["gradient_checkpointing"]:
        fixes.append("train.gradient_checkpointing: true")
    if dist["sequence_parallel"] == 1 and dist["engine"] != "ddp" and stage_spec(recipe["stage"]).lm_loss:
        zero = " with distributed.zero: 3" if dist["engine"] == "deepspeed" else ""
        fixes.append(f"distributed.sequence_parallel: auto{zero} (each sequence split over ranks)")
    return (
        f"the memory planner estimates {need} for {option['label']} ({memory['model']}, {recipe['method']['name']}), "
        f"more than the {budget} available: the run would fail out of memory. Fix: {', '.join(fixes)}; "
        "or set distributed.device_memory_gb if the devices have more, or distributed.force_memory: true "
        "to train anyway (table: `launch plan`)"
    )


def format_memory(memory: Memory, chosen: tuple[int | str, str] | None) -> list[str]:
    """The estimate table `launch plan` prints."""
    lines = ["# memory estimate per device (GiB)", f"model: {memory['model']} (shape from {memory['shape_source']})"]
    if "shape" not in memory:
        return lines + ["no estimate: the model's shape is unknown (give a local model dir with config.json)"]
    share = 100 * memory["params_trainable"] / memory["params_total"]
    lines.append(
        f"parameters: {memory['params_total']:,} total, {memory['params_trainable']:,} trainable ({share:.2f}%)"
    )
    dev = memory["device_memory_gb"]
    lines.append(
        f"device memory: {f'{dev:.1f} GiB' if dev is not None else 'unknown'} per {memory['device']} "
        f"process ({memory['device_memory_source']}), world size {memory['world_size']}"
    )
    if "rollout" in memory:
        rollout = memory["rollout"]
        lines.append(
            f"rollout (stage grpo, in each option's other): generation KV cache {rollout['kv_cache']:.2f} "
            f"({rollout['sequences']} sequences x {rollout['tokens']} tokens), reference model "
            f"{rollout['reference']:.2f} ({rollout['why']}{'; split over the world under ZeRO-3' if rollout['reference'] else ''})"
        )
    if memory["sequence_parallel"] > 1:
        lines.append(
            f"sequence parallel {memory['sequence_parallel']}: activations and logits of 1/{memory['sequence_parallel']} of each sequence per device"
        )
    header = f"{'option':<28}{'params':>8}{'grads':>8}{'optim':>8}{'activ':>8}{'other':>8}{'total':>8}{'host':>8}  fits"
    lines.append(header)
    for o in memory["options"]:
        fits = "refused" if o["refused"] else {True: "yes", False: "no", None: "?"}[o["fits"]]
        mark = " <- plan" if chosen == (o["zero"], o["offload"]) else ""
        other = o["overhead_gb"] + o["rollout_gb"]  # the rollout line above says what it holds
        columns = (
            o["params_gb"],
            o["grads_gb"],
            o["optimizer_gb"],
            o["activations_gb"],
            other,
            o["total_gb"],
            o["host_gb"],
        )
        lines.append(f"{o['label']:<28}" + "".join(f"{value:8.2f}" for value in columns) + f"  {fits}{mark}")
    lines += [f"  refused {o['label']}: {o['refused']}" for o in memory["options"] if o["refused"]]
    return lines
