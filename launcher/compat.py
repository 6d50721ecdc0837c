"""Every place the launcher overrides, assigns or calls a private part of transformers / TRL / PEFT, in one module.

Each is checked by tests/test_compat.py against the installed versions: an upgrade that renames or reshapes one
fails there, by name, instead of as a run that silently saves, samples or batches wrongly. pyproject.toml pins
transformers, trl and peft to the versions this module was tested with. Stages override the public methods
below (prepare_rows, train_sampler, load_checkpoint, save_files), never Trainer's private ones.
No library import at module level: launcher/checkpoint imports this beside the worker's own imports.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the mixins below are read as parts of a Trainer (their super() is the Trainer)
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object


def stage_checkpoints(trainer, parent_of: Callable) -> None:
    """Trainer._get_output_dir(trial) names the folder each checkpoint-N is saved under (Trainer._save_checkpoint
    asks it); ours puts it in a staging folder first (launcher/checkpoint/atomic.py)."""
    trainer._get_output_dir = parent_of


def rank_save(trainer, output_dir: str) -> None:
    """Trainer._save(output_dir): this rank writes the model's files, without save_model's ZeRO-3 gathering."""
    trainer._save(output_dir)


def set_train_batch_size(trainer, size: int) -> None:
    """Trainer._train_batch_size: read from args once in __init__, it sizes the train dataloader."""
    trainer._train_batch_size = size


class PreparedRows:
    """TRL's DPOTrainer / KTOTrainer._prepare_dataset tokenizes the rows again; ours come tokenized with the
    recipe's template (launcher/data), so prepare_rows takes its place: the rows as they are, unless overridden."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return self.prepare_rows(dataset, args)

    def prepare_rows(self, dataset, args):
        return dataset


class PretokenizedPrompts:
    """TRL's GRPOTrainer._tokenize_prompts(prompts) -> (prompt ids, images, multimodal fields) renders and tokenizes
    the prompts again; ours come tokenized with the recipe's template (launcher/data/prompts.py), so
    prompt_token_ids(prompts) takes its place: the ids of each prompt text."""

    prompt_token_ids: Callable[[list], list]  # the trainer that mixes this in provides it

    def _tokenize_prompts(self, prompts: list):
        return self.prompt_token_ids(prompts), None, {}


class TrainerHooks(_TrainerBase):
    """Trainer's private sampler / resume / save hooks, routed to public methods a subclass overrides
    (stages/ppo.py); each default is Trainer's own."""

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler(train_dataset)

    def train_sampler(self, train_dataset=None):
        return super()._get_train_sampler(train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        return self.load_checkpoint(resume_from_checkpoint, model)

    def load_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        return self.save_files(output_dir, state_dict)

    def save_files(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        return super()._save(output_dir, state_dict)


class TrainedAdapterOnly(TrainerHooks):
    """Trainer mixin: save only the trained adapter ("default"). PEFT saves every adapter of a model,
    so a frozen reference copy ("ref", see reference_is_base) would land in output.dir/ref/ too
    (from ZeRO-3's gathered state dict, which lacks the frozen copy, even with the trained weights)."""

    def save_files(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if "ref" not in getattr(model, "peft_config", {}):
            return super().save_files(output_dir, state_dict)
        model.save_pretrained = functools.partial(type(model).save_pretrained, model, selected_adapters=["default"])
        try:
            return super().save_files(output_dir, state_dict)
        finally:
            del model.save_pretrained  # back to the class's method


def prompt_learning_generates_with_its_cache(model) -> None:
    """PEFT (0.21) puts a prefix adapter's key/values into generation under `past_key_values`, and reads the
    generation cache from there to tell the prompt's step from the later ones; transformers (5.x) names it `cache`
    and, given both, drops `past_key_values`: a prefix / P-tuning v2 adapter then generates like the bare base.
    PeftModel.base_model_prepare_inputs_for_generation (the model's own, called first by PEFT's
    prepare_inputs_for_generation) hands PEFT the cache under its old name; PEFT's result goes back as `cache`.
    Idempotent; a model without a prompt-learning adapter (or a PeftModel without a generation head) is left as is."""
    prompt_learning = any(getattr(c, "is_prompt_learning", False) for c in getattr(model, "peft_config", {}).values())
    if not prompt_learning or not hasattr(model, "base_model_prepare_inputs_for_generation"):
        return
    if getattr(model.prepare_inputs_for_generation, "launcher_cache_name", False):
        return
    own, peft_prepare = model.base_model_prepare_inputs_for_generation, model.prepare_inputs_for_generation

    def own_with_old_name(*args, **kwargs) -> dict:
        inputs = own(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def prepare(*args, **kwargs) -> dict:
        inputs = peft_prepare(*args, **kwargs)
        if "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    prepare.launcher_cache_name = True  # type: ignore[attr-defined]
    model.base_model_prepare_inputs_for_generation = own_with_old_name
    model.prepare_inputs_for_generation = prepare


BNB_CPU_BLOCK_N = 32  # bitsandbytes' _convert_weight_packed_for_cpu packs out_features in blocks of 32


def bnb_cpu_kernel_where_it_fits(model) -> None:
    """bitsandbytes (0.50) repacks a Linear4bit's weight for its AVX512-BF16 CPU kernel on the first no-grad
    forward, where the CPU has that instruction set (Linear4bit.support_avx512bf16_for_cpu). The repack assumes
    in_features a multiple of the quantization block and out_features of 32, and otherwise fails with a reshape
    error (the embedded model's 352-wide MLP). Layers of other shapes keep bitsandbytes' dequantizing path."""
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            block = module.weight.quant_state.blocksize
            if module.in_features % block or module.out_features % BNB_CPU_BLOCK_N:
                module.support_avx512bf16_for_cpu = False


def fsdp_on_cpu() -> None:
    """accelerate (1.16, state.py AcceleratorState.__init__) selects FSDP only for accelerator device types
    (MULTI_GPU, MULTI_XPU, ...): on MULTI_CPU it drops the FSDP plugin the Trainer passes and runs DDP, without a
    word. Where a plugin is given on MULTI_CPU, select FSDP as the GPU branch does; fully_shard then runs over
    gloo. Idempotent (AcceleratorState is a shared-state singleton, built again by every Accelerator)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "launcher_fsdp_on_cpu", False):
        return

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, **kwargs) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    setattr(init, "launcher_fsdp_on_cpu", True)  # noqa: B010 (a mark on a function object)
    AcceleratorState.__init__ = init


DEEPSPEED_MUON = "deepspeed.runtime.zero.muon.muon_optimizer"


def deepspeed_muon_stand_in() -> None:
    """DeepSpeed (0.19: zero/utils.py is_zero_supported_optimizer, zero/stage3.py, stage_1_and_2.py,
    bf16_optimizer.py) imports its Muon module in every ZeRO optimizer's set-up, for `isinstance(optimizer,
    MuonWithAuxAdam)` checks alone. That import runs Muon's torch.compile decorators, which load dynamo and
    inductor: about 1.5 s per rank before the first step, for any optimizer. A rank that never builds DeepSpeed's
    Muon gets a module whose class no optimizer is an instance of, so every check answers as before."""
    import sys
    import types

    if DEEPSPEED_MUON in sys.modules:  # already imported (an in-process caller): leave it
        return

    class MuonWithAuxAdam:
        """Stands in for DeepSpeed's Muon optimizer class, which this rank never builds."""

    module = types.ModuleType(DEEPSPEED_MUON, MuonWithAuxAdam.__doc__)
    setattr(module, "MuonWithAuxAdam", MuonWithAuxAdam)  # noqa: B010 (a module built at run time)
    sys.modules[DEEPSPEED_MUON] = module


def share_batches_within_groups(loader, group_size: int) -> None:
    """Give the `group_size` consecutive ranks of each group the same batches: accelerate (1.16, data_loader.py
    prepare_data_loader) deals a prepared loader's batches round-robin over every process, through its
    BatchSamplerShard's num_processes and process_index; here the groups take the places of the processes."""
    from accelerate.data_loader import BatchSamplerShard

    shards = [s for s in (loader.batch_sampler, loader.sampler) if isinstance(s, BatchSamplerShard)]
    if not shards:
        raise RuntimeError(f"the training loader deals no batches over the ranks ({type(loader.batch_sampler)})")
    shards[0].num_processes //= group_size
    shards[0].process_index //= group_size
