"""The shape of plan.json, the one contract between `launch` and every rank: what build_plan returns and
every reader takes, so a misspelt plan key is a type error. Torch-free; nothing here runs.

The keys are those build_plan (plan/build.py) writes, in its order; `launch` adds run_id and resume_from
(checkpoint/resume.py) and, for a ModelScope model, model_dir (plan/preflight.py) before it writes the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from launcher.kernels.choice import Kernels  # plan["kernels"], defined beside kernel_plan that builds it
from launcher.recipe.types import Recipe

if TYPE_CHECKING:  # annotations are never evaluated at run time (Python 3.10 has no typing.NotRequired)
    from typing import NotRequired


class Gpus(TypedDict):
    """The visible NVIDIA GPUs (plan/devices.py detect_gpus, from nvidia-smi)."""

    count: int
    names: list[str]
    compute_caps: list[float]
    memory_gb: list[float]


class World(TypedDict):
    """plan["world"]: the processes of the run and where they meet."""

    nnodes: int
    nproc_per_node: int
    world_size: int
    device: str  # cuda | cpu
    backend: str  # nccl | gloo
    gpus: list[str]
    master_addr: str
    master_port: int


class Batch(TypedDict):
    """plan["batch"]: examples per forward pass, per optimizer step and per step over all ranks."""

    micro_batch_size: int
    grad_accum: int
    global_batch_size: int


class MemoryOption(TypedDict):
    """One ZeRO stage / offload choice of the memory estimate (plan/memory.py Option, GiB per device)."""

    zero: int
    offload: str
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    rollout_gb: float
    host_gb: float
    refused: str | None
    fits: bool | None
    label: str
    total_gb: float


class ZeroChoice(TypedDict):
    """plan["memory"]["auto"]: what `distributed.zero: auto` chose."""

    zero: int
    offload: str


class Memory(TypedDict):
    """plan["memory"]: the planner's memory estimate (plan/memory.py estimate, plan/memory_fit.py)."""

    model: str
    shape_source: str
    device: str
    device_memory_gb: float | None
    device_memory_source: str
    host_memory_gb: float | None
    world_size: int
    sequence_parallel: int  # activations and logits are per 1/N of every sequence
    options: list[MemoryOption]
    shape: NotRequired[dict[str, Any]]  # model/shape.py's Shape; these three only where the planner knows it
    params_total: NotRequired[int]
    params_trainable: NotRequired[int]
    rollout: NotRequired[dict[str, Any]]  # stage grpo: memory.py rollout_bytes, in GiB
    auto: NotRequired[ZeroChoice]  # only for distributed.zero: auto
    refusal: NotRequired[str | None]  # build_plan adds it: why training refuses the plan (does not fit)


class ModelSource(TypedDict):
    """plan["model"]: where the ranks read model.path from (plan/preflight.py model_source)."""

    path: str
    hub: str | None  # None: a local folder or a builtin
    folder: str | None  # a hub id's snapshot in the local cache
    missing: list[str]  # what a cached snapshot lacks


class NodeCommand(TypedDict):
    """plan["nodes"][k]: what node k runs."""

    node_rank: int
    host: str | None  # the hostfile's host; None without a hostfile
    plan_file: str
    argv: list[str]


class EngineConfigs(TypedDict):
    """The engine's config under its EngineSpec.config_key; "deepspeed" is always there (None: DeepSpeed is off)."""

    deepspeed: dict[str, Any] | None
    fsdp: NotRequired[dict[str, Any]]


class Mesh(TypedDict):
    """plan["mesh"]: how the world's ranks split the work (plan/mesh.py)."""

    data_parallel: int  # groups that each train their own share of the batch
    sequence_parallel: int  # ranks in a group, each holding 1/N of every sequence (Ulysses)
    reason: str  # why this degree (distributed.sequence_parallel: auto says what it tried)


class Context(TypedDict):
    """The model's context (plan/context.py): data.cutoff_len fits `length`."""

    max_position_embeddings: int | None  # the model's config.json; None for a hub model not read at plan time
    length: int | None  # factor x original under model.rope_scaling, else max_position_embeddings
    rope_scaling: dict[str, Any] | None  # rope_type, factor, original_max_position_embeddings: set on the config


class Plan(TypedDict):
    """plan.json."""

    version: int
    recipe_file: str | None
    pending: list[str]  # earlier stages' outputs that do not exist yet (`launch plan`, `launch sbatch`)
    stage: NotRequired[dict[str, Any]]  # what a stage's spec adds to its plan (StageSpec.plan), e.g. grpo's batch
    notes: list[str]  # what is verified of a combination and what is not (MethodSpec.notes), for `launch plan`
    recipe: Recipe  # resolved, with distributed.nnodes counted and distributed.zero: auto chosen
    model: ModelSource
    world: World
    dtype: str  # bf16 | fp16 | fp32
    batch: Batch
    mesh: Mesh
    deepspeed: dict[str, Any] | None  # DeepSpeed's config (engines/deepspeed_config.py); None under another engine
    fsdp: NotRequired[dict[str, Any]]  # FSDP2's TrainingArguments.fsdp_config (engines/fsdp_spec.py)
    memory: Memory
    kernels: Kernels
    context: Context
    env: dict[str, str]
    output_dir: str
    plan_file: str
    nodes: list[NodeCommand]
    run_id: NotRequired[str]  # added by `launch` (checkpoint/resume.py prepare_resume)
    resume_from: NotRequired[str | None]
    model_dir: NotRequired[str]  # a ModelScope model's download folder (plan/preflight.py ensure_model)
