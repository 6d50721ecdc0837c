"""The recipe contract (v1) as data: every key, its type, default, allowed values and doc.

recipe.py validates against this table and `launch schema` renders it as JSON Schema, so
the two can never disagree. No torch import here (the planner must stay fast).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from launcher import registry
from launcher.data.defaults import ON_BAD_ROW, TEMPLATE, TIMEOUT_MINUTES
from launcher.data.templates import TEMPLATES as REGISTERED_TEMPLATES
from launcher.recipe import optimizers, schedule
from launcher.registry import Key

DEFAULT_MASTER_PORT = 29500  # distributed.master_port: auto on several nodes (they must agree without talking)
# the registries' names, as live views: a stage or method registered later is a valid choice too
STAGES = registry.STAGES.keys()
METHODS = registry.METHODS.keys()
ENGINES = registry.ENGINES.keys()
TEMPLATES = ("auto", *REGISTERED_TEMPLATES)
ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")  # model.rope_scaling.type: what LLaMA-Factory offers


def spec_keys(
    selector: str, names: Mapping[str, str], spec_of: Callable[[str], registry.StageSpec | registry.MethodSpec]
) -> dict[str, Key]:
    """The keys the registered specs declare (StageSpec.keys, MethodSpec.keys), each valid only where `selector`
    names a spec that declares it; a key several specs share (train.pref_beta) is one Key object."""
    keys: dict[str, Key] = {}
    owners: dict[str, list[str]] = {}
    for name in names:
        for key_name, key in spec_of(name).keys.items():
            if keys.setdefault(key_name, key) is not key:
                raise ValueError(f"{selector} {name} declares its own {key_name}; share the other spec's Key instead")
            owners.setdefault(key_name, []).append(name)
    return {key_name: replace(key, only_for=(selector, tuple(owners[key_name]))) for key_name, key in keys.items()}


SLURM = Key(
    "section",
    None,
    "SLURM batch settings used by `launch sbatch`",
    nullable=True,
    fields={
        "partition": Key("str", None, "partition", nullable=True),
        "account": Key("str", None, "account", nullable=True),
        "time": Key("str", "24:00:00", "wall-clock limit"),
        "gpus_per_node": Key("int", 8, "GPUs per node", low=0),
        "nodes": Key("int", 1, "nodes", low=1),
        "cpus_per_task": Key(
            "int", None, "CPUs for each node's task (its torchrun agent and all its ranks)", nullable=True, low=1
        ),
        "extra": Key("str_list", [], "extra #SBATCH lines"),
    },
)
Section = dict[str, Key]
SCHEMA: dict[str, Section | Key] = {  # a section of keys, or a top-level Key (a nullable section Key too)
    "model": {
        # no default: a recipe that forgot it must not silently train the embedded test model
        "path": Key("str", None, "a hub id, a local model dir, or builtin:tiny-qwen2 (the small embedded test model)"),
        "template": Key(
            "str",
            TEMPLATE,
            "chat template: auto = the tokenizer's chat_template (right for any model that ships "
            "one), or a registered name: qwen2 = Qwen2's own chat template, chatglm3_thudm = ChatGLM3's as THUDM "
            "publishes it, every other name renders and labels as LLaMA-Factory's template of that name (docs/data.md)",
            choices=TEMPLATES,
            guess=False,
        ),
        "dtype": Key("str", "bf16", "training precision", choices=("bf16", "fp16", "fp32", "auto")),
        "attn": Key(
            "str",
            "auto",
            "attention kernel: auto = the fastest this device and the installed packages allow "
            "(`launch plan` says which and why); flex_attention and flash_attention_2 run neat "
            "packing padding-free",
            choices=("auto", "eager", "sdpa", "flex_attention", "flash_attention_2"),
        ),
        "hub": Key(
            "str",
            "huggingface",
            "where a hub id in model.path comes from: huggingface (the local HF cache, "
            "else fetched once before the ranks start) or modelscope (needs the modelscope "
            "package); `launch download` fetches it ahead for offline runs",
            choices=("huggingface", "modelscope"),
        ),
        "trust_remote_code": Key("bool", False, "run the model repository's own code (only when you trust it)"),
        "adapter": Key(
            "str",
            None,
            "PEFT LoRA adapter dir of an earlier stage (output.dir of its run) to keep training "
            "in this stage; its own rank/alpha/targets apply (method.name: lora). To start a new "
            "adapter on top instead, `launch merge` it and set model.path to the merged dir",
            nullable=True,
        ),
        "quantization": Key(
            "section",
            None,
            "k-bit base for QLoRA / QOFT (only with method.name: lora or oft)",
            nullable=True,
            fields={
                "bits": Key("int", 4, "4 or 8", choices=(4, 8)),
                "type": Key("str", "nf4", "4-bit data type", choices=("nf4", "fp4")),
                "double_quant": Key("bool", True, "quantize the quantization constants too"),
            },
        ),
        "rope_scaling": Key(
            "section",
            None,
            "RoPE scaling for a longer context (LLaMA-Factory's rope_scaling): the planner's context length is "
            "factor x original_max_position_embeddings, and data.cutoff_len must fit it",
            nullable=True,
            fields={
                "type": Key(
                    "str",
                    "linear",
                    "transformers' rope_type (llama3 with Llama 3.1's low/high frequency factors 1 and 4)",
                    choices=ROPE_TYPES,
                ),
                "factor": Key(
                    "float",
                    None,
                    "context multiplier (null: ceil(data.cutoff_len / original), as LLaMA-Factory derives it)",
                    nullable=True,
                    low=1,
                ),
                "original_max_position_embeddings": Key(
                    "int",
                    None,
                    "the context the model was trained at (null: its max_position_embeddings)",
                    nullable=True,
                    low=1,
                ),
            },
        ),
    },
    "stage": Key("str", "sft", "training stage", choices=STAGES),
    "method": {
        "name": Key(
            "str",
            "lora",
            "fine-tuning method; qlora = lora over a 4-bit base (model.quantization's defaults)",
            choices=METHODS,
        ),
        **spec_keys("method.name", registry.METHODS, registry.method_spec),
    },
    "data": {
        "datasets": Key(
            "str_list",
            ["demo_sft"],
            'names in <dataset_dir>/dataset_info.json, or file paths; one string "a,b" is the list [a, b]',
            commas=True,
        ),
        "dataset_dir": Key("str", "data", "folder holding dataset_info.json"),
        "eval_datasets": Key("str_list", [], 'evaluation datasets ("a,b" as data.datasets)', commas=True),
        "val_size": Key(
            "float", 0.0, "share of the training data held out for evaluation", low=0, high=1, high_inclusive=False
        ),
        "cutoff_len": Key("int", 2048, "maximum tokens per example", low=8),
        "packing": Key("str", "none", "sequence packing", choices=("none", "greedy", "neat")),
        "train_on_prompt": Key("bool", False, "also train on prompt tokens"),
        "mask_history": Key("bool", False, "train only on the last assistant turn"),
        "max_samples": Key("int", None, "use at most this many examples per dataset", nullable=True, low=1),
        "max_eval_samples": Key(
            "int",
            None,
            "evaluate on at most this many examples (the first of the evaluation rows)",
            nullable=True,
            low=1,
        ),
        "on_bad_row": Key(
            "str",
            ON_BAD_ROW,
            "a malformed row (bad JSON, missing column, wrong role order): error names it, skip drops it and counts it in the log",
            choices=("error", "skip"),
        ),
        "cache": Key(
            "bool",
            True,
            "tokenize once and reuse: one process builds the cache entry (keyed by data files, tokenizer, template, data settings, code), the others load it",
        ),
        "cache_dir": Key(
            "str",
            None,
            "folder of the tokenized-data cache (default: $LAUNCHER_CACHE/data, else ~/.cache/llm-launcher/data); on a shared file system all nodes share one build",
            nullable=True,
        ),
        "num_workers": Key("int", 1, "processes that render and tokenize the data (on the building rank)", low=1),
    },
    "train": {
        "epochs": Key("float", 3.0, "passes over the data", low=0, low_inclusive=False),
        "max_steps": Key("int", None, "stop after this many optimizer steps (overrides epochs)", nullable=True, low=1),
        "micro_batch_size": Key("int", 1, "examples per device per forward pass", low=1),
        "eval_batch_size": Key(
            "int",
            None,
            "examples per device per evaluation forward pass (null = train.micro_batch_size)",
            nullable=True,
            low=1,
        ),
        "grad_accum": Key("int", 8, "micro batches per optimizer step", low=1),
        "lr": Key("float", 1.0e-4, "peak learning rate", low=0, low_inclusive=False),
        **schedule.KEYS,
        "weight_decay": Key("float", 0.0, "AdamW weight decay", low=0),
        "max_grad_norm": Key("float", 1.0, "gradient clipping (0 = off)", low=0),
        "max_bad_steps": Key(
            "int",
            5,
            "stop after this many consecutive steps whose loss or gradient norm is NaN/Inf; "
            "their updates are skipped and the last good state is saved (docs/monitoring.md)",
            low=1,
        ),
        **optimizers.KEYS,
        "gradient_checkpointing": Key("bool", True, "recompute activations in backward to save memory"),
        "loss_kernel": Key(
            "str",
            "auto",
            "causal-LM loss (pt, sft): plain = full logits; chunked = LM head + cross-entropy "
            "in token chunks, logits never whole (any device); liger = liger-kernel's fused "
            "linear cross-entropy (CUDA); auto = liger on CUDA when installed (not under "
            "sequence parallelism), else chunked for vocabularies >= 32k (plain under fsdp "
            "when the method trains the LM head)",
            choices=("auto", "plain", "chunked", "liger"),
        ),
        "compile": Key(
            "bool", False, "torch.compile each decoder layer (dynamic shapes: packed rows do not recompile)"
        ),
        "neftune_alpha": Key("float", None, "NEFTune noise alpha", nullable=True, low=0, low_inclusive=False),
        "seed": Key("int", 42, "random seed", low=0),
        "logging_steps": Key("int", 10, "log every N optimizer steps", low=1),
        "save_steps": Key("int", 500, "checkpoint every N optimizer steps", low=1),
        "save_total_limit": Key(
            "int", None, "keep only the newest N complete checkpoints (null = all)", nullable=True, low=1
        ),
        "eval_steps": Key("int", None, "evaluate every N optimizer steps", nullable=True, low=1),
        "eval_generate": Key(
            "bool",
            False,
            "sft: at each evaluation also generate replies for data.eval_datasets (the eval section's settings) and log `launch eval`'s BLEU-4 / ROUGE as eval/bleu-4, eval/rouge-*",
        ),
        "resume": Key("str", "auto", "auto (latest complete checkpoint in output.dir), none, or a checkpoint dir"),
        "trust_checkpoint": Key(
            "bool",
            False,
            "resume a checkpoint without the checks of what it may run: one that has no checksum manifest "
            "written by this launcher, or whose pickles name classes no checkpoint of this launcher holds "
            "(loading runs what they name: only one you know the origin of; docs/checkpoints.md)",
        ),
        **spec_keys("stage", registry.STAGES, registry.stage_spec),
    },
    "eval": {
        "max_new_tokens": Key("int", 128, "`launch eval`: longest generated reply", low=1),
        "do_sample": Key("bool", False, "`launch eval`: sample instead of greedy decoding"),
        "temperature": Key(
            "float", 0.95, "`launch eval`: sampling temperature (with do_sample)", low=0, low_inclusive=False
        ),
        "top_p": Key(
            "float", 0.7, "`launch eval`: nucleus sampling mass (with do_sample)", low=0, high=1, low_inclusive=False
        ),
        "top_k": Key("int", 50, "`launch eval`: sample among the k likeliest tokens (with do_sample)", low=1),
        "batch_size": Key("int", 8, "`launch eval`: prompts generated together per process", low=1),
        "engine": Key(
            "str",
            "auto",
            "`launch eval`: generate with transformers (hf) or vLLM (vllm; the LoRA adapter through LoRARequest); auto = vllm where it is installed and a GPU is visible, else hf",
            choices=("auto", "hf", "vllm"),
        ),
    },
    "distributed": {
        "engine": Key(
            "str",
            "deepspeed",
            "deepspeed (ZeRO), plain ddp, or fsdp (PyTorch FSDP2: every parameter sharded over all ranks, "
            "checkpoints in sharded DCP; docs/parallelism.md)",
            choices=ENGINES,
        ),
        "zero": Key(
            "int",
            3,
            "DeepSpeed's ZeRO stage; auto = the fastest stage/offload the memory planner finds fitting. "
            "0 under engine ddp and fsdp (the default there): FSDP2 shards parameters, gradients and "
            "optimizer state itself, as ZeRO-3 does, and auto picks its offload",
            choices=(0, 1, 2, 3),
            literals=("auto",),
        ),
        "offload": Key(
            "str",
            "none",
            "offload to the CPU: optimizer (DeepSpeed ZeRO 1-3) or all (ZeRO-3's parameters too; under fsdp, "
            "FSDP2's CPUOffloadPolicy: parameters, gradients and optimizer state)",
            choices=("none", "optimizer", "all"),
        ),
        "sequence_parallel": Key(
            "int",
            1,
            "Ulysses sequence parallelism: each of N ranks holds 1/N of every sequence (an all-to-all swaps it for "
            "a head split around attention), for contexts one device cannot hold. Needs distributed.engine: "
            "deepspeed with zero 3 (ALST) or fsdp (the launcher's own exchange, neat packing too), stage sft or pt; "
            "N divides the world size, the attention heads and the KV heads (or they divide N). auto = the "
            "smallest degree at which data.cutoff_len fits the devices (docs/parallelism.md)",
            literals=("auto",),
            low=1,
        ),
        "deepspeed_config": Key(
            "str",
            None,
            "your own DeepSpeed JSON instead of the bundled ones (as LLaMA-Factory and "
            'the HF Trainer take): its "auto" values are filled from the recipe (batch sizes, '
            "clipping, bf16/fp16, optimizer lr/weight decay; the scheduler's step counts by the "
            "Trainer), its stage/offload set distributed.zero/offload; an explicit value that "
            "contradicts the recipe is refused. Relative to the current folder; `launch plan` "
            "shows the result",
            nullable=True,
        ),
        "device_memory_gb": Key(
            "float",
            None,
            "memory per device (GiB) for the planner's fit check; default: detected "
            "(nvidia-smi, or host RAM / processes per node on CPU)",
            nullable=True,
            low=0,
            low_inclusive=False,
        ),
        "force_memory": Key(
            "bool",
            False,
            "train even when the memory planner estimates that the plan does not fit "
            "the device (fits: no); by default training refuses such a plan, `launch plan` shows it",
        ),
        "launcher": Key("str", "torchrun", "process launcher", choices=("torchrun", "accelerate", "deepspeed")),
        "nproc_per_node": Key(
            "int", "auto", "processes per node: auto = visible GPUs, else 2 CPU processes", literals=("auto",), low=1
        ),
        "nnodes": Key(
            "int", None, "number of nodes (default: the hostfile's selected hosts, else 1)", nullable=True, low=1
        ),
        "hostfile": Key("str", None, "DeepSpeed-format hostfile (host slots=N per line)", nullable=True),
        "master_addr": Key("str", None, "address of node 0 (required for nnodes > 1)", nullable=True),
        "master_port": Key(
            "int",
            "auto",
            "rendezvous port on node 0; auto = a free port on a single node (as "
            f"torchrun --standalone), {DEFAULT_MASTER_PORT} for several nodes",
            literals=("auto",),
            low=1,
            high=65535,
        ),
        "max_restarts": Key("int", 0, "torchrun restarts of the whole worker group", low=0),
        "timeout_minutes": Key("int", TIMEOUT_MINUTES, "timeout of every collective and rendezvous", low=1),
        "env_forward": Key(
            "str_list",
            [],
            "environment variables copied from the launching shell to the nodes started over ssh (hostfile), e.g. [NCCL_SOCKET_IFNAME]",
        ),
        "ssh_port": Key(
            "int",
            None,
            "ssh port of the hostfile's hosts (default: ~/.ssh/config, else 22)",
            nullable=True,
            low=1,
            high=65535,
        ),
        "ssh_options": Key(
            "str_list", [], "extra ssh arguments for the hostfile's hosts, e.g. [-i, ~/.ssh/cluster_key]"
        ),
    },
    "slurm": SLURM,
    "output": {
        "dir": Key("str", None, "run folder (default outputs/<recipe name>)", nullable=True),
        "report_to": Key(
            "str_list",
            ["tensorboard"],
            "loggers, several at once; wandb, mlflow and swanlab log offline into output.dir (docs/monitoring.md)",
            choices=("tensorboard", "wandb", "mlflow", "swanlab", "none"),
        ),
        "overwrite": Key("bool", False, "allow reusing an output.dir that already holds a run"),
    },
}


def all_keys(schema: Mapping[str, Section | Key] = SCHEMA, prefix: str = "") -> dict[str, Key]:
    """Flat {dotted key: Key} over the whole schema, sections of Keys included."""
    flat: dict[str, Key] = {}
    for name, spec in schema.items():
        dotted = f"{prefix}{name}"
        if isinstance(spec, dict):
            flat.update(all_keys(spec, dotted + "."))
        else:
            flat[dotted] = spec
            if spec.kind == "section":
                flat.update(all_keys(spec.fields, dotted + "."))
    return flat


def _json_type(key: Key) -> dict:
    base = {
        "int": {"type": "integer"},
        "float": {"type": "number"},
        "bool": {"type": "boolean"},
        "str": {"type": "string"},
    }
    out: dict[str, Any]
    if key.kind == "section":
        out = {
            "type": "object",
            "additionalProperties": False,
            "properties": {n: _json_type(k) for n, k in key.fields.items()},
        }
    elif key.kind == "float_list":
        element = _json_type(replace(key, kind="float", default=None, nullable=False, literals=()))
        del element["description"]
        out = {"type": "array", "items": element, "minItems": 1}
    elif key.kind == "str_list":
        item: dict[str, Any] = {"type": "string"}
        if key.choices:
            item["enum"] = list(key.choices)
        out = {"anyOf": [{"type": "array", "items": item}, item]}
    else:
        out = dict(base[key.kind])
        if key.choices:
            out["enum"] = list(key.choices)
        if key.low is not None:
            out["exclusiveMinimum" if not key.low_inclusive else "minimum"] = key.low
        if key.high is not None:
            out["exclusiveMaximum" if not key.high_inclusive else "maximum"] = key.high
    alternatives: list[dict[str, Any]] = [out]
    if key.literals:
        alternatives.append({"enum": list(key.literals)})
    if key.nullable:
        alternatives.append({"type": "null"})
    result: dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    result["description"] = key.doc
    if key.default is not None:
        result["default"] = key.default
    return result


def json_schema() -> dict:
    """JSON Schema (draft 2020-12) of a recipe, for editors."""

    def section(spec: dict) -> dict:
        out = {
            "type": "object",
            "additionalProperties": False,
            "properties": {n: section(s) if isinstance(s, dict) else _json_type(s) for n, s in spec.items()},
        }
        required = [n for n, s in spec.items() if isinstance(s, Key) and s.default is None and not s.nullable]
        return {**out, "required": required} if required else out

    out = section(SCHEMA)
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = "launcher recipe v1"
    return out
