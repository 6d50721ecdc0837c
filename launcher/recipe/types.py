"""The resolved recipe (what load_recipe returns): one TypedDict per section, every key present.

Generated from launcher/recipe/schema.py by `launch schema --typeddict > launcher/recipe/types.py`; do not
edit by hand (tests/recipe/test_schema_doc.py fails when this file and the schema differ). A key that only some
stages or methods read is NotRequired: the resolved recipe holds it only under them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:  # annotations are never evaluated at run time (Python 3.10 has no typing.NotRequired)
    from typing import NotRequired


class QuantizationSection(TypedDict):
    """K-bit base for QLoRA / QOFT (only with method.name: lora or oft)."""

    bits: int
    type: str
    double_quant: bool


class RopeScalingSection(TypedDict):
    """RoPE scaling for a longer context (LLaMA-Factory's rope_scaling): the planner's context length is factor x original_max_position_embeddings, and data.cutoff_len must fit it."""

    type: str
    factor: float | None
    original_max_position_embeddings: int | None


class ModelSection(TypedDict):
    """The recipe's `model` section."""

    path: str
    template: str
    dtype: str
    attn: str
    hub: str
    trust_remote_code: bool
    adapter: str | None
    quantization: QuantizationSection | None
    rope_scaling: RopeScalingSection | None


class MethodSection(TypedDict):
    """The recipe's `method` section."""

    name: str
    trainable_layers: NotRequired[int]
    trainable_modules: NotRequired[list[str] | Literal["all"]]
    extra_modules: NotRequired[list[str] | None]
    llama_pro: NotRequired[bool]
    rank: NotRequired[int]
    alpha: NotRequired[float]
    dropout: NotRequired[float]
    target: NotRequired[list[str] | Literal["all"]]
    variant: NotRequired[str]
    loraplus_ratio: NotRequired[float | None]
    additional_target: NotRequired[list[str] | None]
    num_virtual_tokens: NotRequired[int]
    prefix_projection: NotRequired[bool]
    block_size: NotRequired[int]
    blocks: NotRequired[int]
    module_dropout: NotRequired[float]
    coft: NotRequired[bool]
    eps: NotRequired[float]
    block_share: NotRequired[bool]
    cayley_neumann: NotRequired[bool]
    neumann_terms: NotRequired[int]


class DataSection(TypedDict):
    """The recipe's `data` section."""

    datasets: list[str]
    dataset_dir: str
    eval_datasets: list[str]
    val_size: float
    cutoff_len: int
    packing: str
    train_on_prompt: bool
    mask_history: bool
    max_samples: int | None
    max_eval_samples: int | None
    on_bad_row: str
    cache: bool
    cache_dir: str | None
    num_workers: int


class GaloreSection(TypedDict):
    """GaLore (galore-torch's GaLoreAdamW): AdamW on low-rank projections of the target weights' gradients."""

    target: list[str]
    rank: int
    update_interval: int
    scale: float
    proj_type: str


class ApolloSection(TypedDict):
    """APOLLO (apollo-torch's APOLLOAdamW): AdamW's update scaled per channel from a low-rank auxiliary state."""

    target: list[str]
    rank: int
    update_interval: int
    scale: float
    proj_type: str
    proj: str
    scale_type: str
    scale_front: bool


class BadamSection(TypedDict):
    """BAdam (badam's BlockOptimizer, layer-wise): AdamW on one decoder layer at a time, the others frozen."""

    switch_mode: str
    switch_interval: int
    start_block: int | None


class MuonSection(TypedDict):
    """Muon (torch.optim.Muon) on the decoder's weight matrices; AdamW (torch.optim.AdamW) on the embeddings, the output head and every 1-D parameter, which Muon cannot orthogonalise."""

    momentum: float
    ns_steps: int
    adjust_lr: str


class TrainSection(TypedDict):
    """The recipe's `train` section."""

    epochs: float
    max_steps: int | None
    micro_batch_size: int
    eval_batch_size: int | None
    grad_accum: int
    lr: float
    scheduler: str
    warmup_ratio: float
    warmup_steps: int | None
    cycles: NotRequired[int]
    lr_end: NotRequired[float]
    power: NotRequired[float]
    timescale: NotRequired[int | None]
    min_lr_ratio: NotRequired[float]
    decay_steps: NotRequired[int | None]
    decay_type: NotRequired[str]
    plateau_factor: NotRequired[float]
    plateau_patience: NotRequired[int]
    weight_decay: float
    max_grad_norm: float
    max_bad_steps: int
    optimizer: str
    galore: NotRequired[GaloreSection]
    apollo: NotRequired[ApolloSection]
    badam: NotRequired[BadamSection]
    muon: NotRequired[MuonSection]
    gradient_checkpointing: bool
    loss_kernel: str
    compile: bool
    neftune_alpha: float | None
    seed: int
    logging_steps: int
    save_steps: int
    save_total_limit: int | None
    eval_steps: int | None
    eval_generate: bool
    resume: str
    trust_checkpoint: bool
    sft_loss: NotRequired[str]
    pref_beta: NotRequired[float]
    pref_loss: NotRequired[str]
    pref_ftx: NotRequired[float]
    simpo_gamma: NotRequired[float]
    kto_desirable_weight: NotRequired[float]
    kto_undesirable_weight: NotRequired[float]
    reward_model: NotRequired[str | None]
    max_new_tokens: NotRequired[int]
    temperature: NotRequired[float]
    top_k: NotRequired[int]
    top_p: NotRequired[float]
    kl_coef: NotRequired[float]
    ppo_clip: NotRequired[float]
    vf_coef: NotRequired[float]
    ppo_epochs: NotRequired[int]
    num_generations: NotRequired[int]
    clip_high: NotRequired[float | None]
    loss_type: NotRequired[str]
    reward_scaling: NotRequired[str]
    mask_truncated: NotRequired[bool]
    rewards: NotRequired[list[str]]
    reward_weights: NotRequired[list[float] | None]
    format_pattern: NotRequired[str]
    rollout_engine: NotRequired[str]
    vllm_gpu_memory: NotRequired[float]
    completions_log_steps: NotRequired[int | None]


class EvalSection(TypedDict):
    """The recipe's `eval` section."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    batch_size: int
    engine: str


class DistributedSection(TypedDict):
    """The recipe's `distributed` section."""

    engine: str
    zero: int | Literal["auto"]
    offload: str
    sequence_parallel: int | Literal["auto"]
    deepspeed_config: str | None
    device_memory_gb: float | None
    force_memory: bool
    launcher: str
    nproc_per_node: int | Literal["auto"]
    nnodes: int | None
    hostfile: str | None
    master_addr: str | None
    master_port: int | Literal["auto"]
    max_restarts: int
    timeout_minutes: int
    env_forward: list[str]
    ssh_port: int | None
    ssh_options: list[str]


class SlurmSection(TypedDict):
    """SLURM batch settings used by `launch sbatch`."""

    partition: str | None
    account: str | None
    time: str
    gpus_per_node: int
    nodes: int
    cpus_per_task: int | None
    extra: list[str]


class OutputSection(TypedDict):
    """The recipe's `output` section."""

    dir: str | None
    report_to: list[str]
    overwrite: bool


class Recipe(TypedDict):
    """A resolved recipe: every section, every key present."""

    model: ModelSection
    stage: str
    method: MethodSection
    data: DataSection
    train: TrainSection
    eval: EvalSection
    distributed: DistributedSection
    slurm: SlurmSection | None
    output: OutputSection
