"""launcher/compat.py's hold on private parts of transformers / TRL: every hook it overrides, assigns or calls
still exists in the installed versions with the signature and the call site it relies on, and no other module
touches one. A failure here names what an upgrade changed (pyproject.toml pins the tested versions)."""

from __future__ import annotations

import inspect
import re

import pytest
from transformers import Trainer
from trl import DPOTrainer, GRPOTrainer, KTOTrainer

from launcher import compat
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

PREPARE = ["self", "dataset", "processing_class", "args", "dataset_name"]


@pytest.mark.parametrize(
    ("owner", "name", "expected"),
    [
        (Trainer, "_get_output_dir", ["self", "trial"]),  # stage_checkpoints
        (Trainer, "_save", ["self", "output_dir", "state_dict"]),  # rank_save, TrainerHooks.save_files
        (Trainer, "save_model", ["self", "output_dir", "_internal_call"]),  # checkpoint/model_save.py replaces it
        (Trainer, "_get_train_sampler", ["self", "train_dataset"]),  # TrainerHooks.train_sampler
        (KTOTrainer, "_get_train_sampler", ["self", "train_dataset"]),
        (Trainer, "_load_from_checkpoint", ["self", "resume_from_checkpoint", "model"]),  # TrainerHooks.load_checkpoint
        (DPOTrainer, "_prepare_dataset", PREPARE),  # PreparedRows
        (KTOTrainer, "_prepare_dataset", PREPARE),
        (GRPOTrainer, "_tokenize_prompts", ["self", "prompts"]),  # PretokenizedPrompts
    ],
)
def test_each_private_hook_keeps_the_signature_compat_relies_on(owner, name, expected):
    assert list(inspect.signature(getattr(owner, name)).parameters) == expected, f"{owner.__name__}.{name} changed"


def test_the_library_still_calls_the_hooks_compat_replaces():
    trainer = inspect.getsource(Trainer)
    assert "self._get_output_dir(trial=trial)" in trainer  # each checkpoint's parent folder
    assert "self._train_batch_size = args.train_batch_size" in trainer  # read once in __init__ ...
    assert "batch_size=self._train_batch_size" in trainer  # ... and the train dataloader's batch
    assert "sampler_fn=self._get_train_sampler" in trainer
    assert "self._load_from_checkpoint(resume_from_checkpoint" in trainer
    assert "self._save(output_dir" in inspect.getsource(Trainer.save_model)
    for preference in (DPOTrainer, KTOTrainer):
        assert 'self._prepare_dataset(train_dataset, processing_class, args, "train")' in inspect.getsource(preference)
    # every generation (hf and vLLM alike) takes its prompt ids from here, with nothing else of its result unused
    assert "prompt_ids, images, multimodal_fields = self._tokenize_prompts(prompts)" in inspect.getsource(GRPOTrainer)


def test_peft_and_transformers_still_name_the_generation_cache_as_compat_bridges():
    """prompt_learning_generates_with_its_cache: PEFT injects a prefix as `past_key_values` after calling the model's
    own prepare_inputs_for_generation, which hands the cache over as `cache`."""
    from peft import PeftModelForCausalLM
    from transformers import GenerationMixin

    peft_prepare = inspect.getsource(PeftModelForCausalLM.prepare_inputs_for_generation)
    assert "model_kwargs = self.base_model_prepare_inputs_for_generation(*args, **kwargs)" in peft_prepare
    assert 'model_kwargs["past_key_values"] = new_past_key_values' in peft_prepare
    assert 'model_inputs["cache"] = cache' in inspect.getsource(GenerationMixin.prepare_inputs_for_generation)


class Library:
    """Stands in for Trainer: its private hooks answer who ran them."""

    def _get_train_sampler(self, train_dataset=None):
        return ("library sampler", train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        return ("library load", resume_from_checkpoint, model)

    def _save(self, output_dir=None, state_dict=None):
        return ("library save", output_dir, state_dict)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return ("library prepare", dataset)


def test_the_hooks_route_to_public_methods_whose_default_is_the_librarys():
    class Default(compat.PreparedRows, compat.TrainerHooks, Library):
        pass

    class Ours(Default):
        def train_sampler(self, train_dataset=None):
            return ("ours", super().train_sampler(train_dataset))

        def save_files(self, output_dir=None, state_dict=None):
            return ("ours", super().save_files(output_dir, state_dict))

        def prepare_rows(self, dataset, args):
            return ("ours", dataset, args)

    default, ours = Default(), Ours()
    assert default._get_train_sampler("rows") == ("library sampler", "rows")
    assert default._load_from_checkpoint("ckpt", "m") == ("library load", "ckpt", "m")
    assert default._save("out", {}) == ("library save", "out", {})
    assert default._prepare_dataset("rows", None, "args", "train") == "rows"  # ours are tokenized already
    assert ours._get_train_sampler("rows") == ("ours", ("library sampler", "rows"))
    assert ours._save("out") == ("ours", ("library save", "out", None))
    assert ours._prepare_dataset("rows", None, "args", "train") == ("ours", "rows", "args")


PRIVATE = re.compile(
    r"def (_save|_get_train_sampler|_load_from_checkpoint|_prepare_dataset|_get_output_dir|_tokenize_prompts)\(|"
    r"\.(_get_output_dir|_train_batch_size) = |[a-z]\._save\("
)


def test_no_other_module_touches_a_private_hook():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "launcher").rglob("*.py"))
        if path.name != "compat.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert offenders == []


def test_bnb_cpu_kernel_is_kept_off_the_4bit_layers_it_cannot_repack():
    """On a CPU with AVX512-BF16, bitsandbytes repacks each Linear4bit for its CPU kernel at the first no-grad
    forward; a 352-wide input (the embedded model's MLP) fails there. The flag is forced on, as such a CPU sets it."""
    import bitsandbytes as bnb
    import torch

    def four_bit(inputs: int, outputs: int):
        layer = bnb.nn.Linear4bit(inputs, outputs, bias=False, compute_dtype=torch.float32).to("cpu").eval()
        layer.support_avx512bf16_for_cpu = True
        return layer

    torch.manual_seed(0)
    x = torch.randn(3, 352)
    with pytest.raises(RuntimeError, match="is invalid for input of size"), torch.no_grad():
        four_bit(352, 128)(x)  # the library's own failure, which the hook exists for
    narrow, fitting = four_bit(352, 128), four_bit(128, 384)
    compat.bnb_cpu_kernel_where_it_fits(torch.nn.Sequential(narrow, fitting))
    assert not narrow.support_avx512bf16_for_cpu and fitting.support_avx512bf16_for_cpu
    with torch.no_grad():
        expected = x @ bnb.functional.dequantize_4bit(narrow.weight.data, narrow.weight.quant_state).T
        assert torch.allclose(narrow(x), expected, atol=1e-5)


def test_accelerate_still_selects_fsdp_only_off_cpu():
    """fsdp_on_cpu selects FSDP on MULTI_CPU because accelerate's AcceleratorState.__init__ does so only in its
    accelerator branch; if that changes, the shim (and its keyword fsdp_plugin) must be reviewed."""
    from accelerate.state import AcceleratorState

    source = inspect.getsource(AcceleratorState.__init__)
    branch = source[
        source.index("elif self.distributed_type in [") : source.index("self.distributed_type = DistributedType.FSDP")
    ]
    assert "DistributedType.MULTI_GPU," in branch and "MULTI_CPU" not in branch
    assert "fsdp_plugin" in inspect.signature(AcceleratorState.__init__).parameters


def test_deepspeed_reads_its_muon_module_only_for_isinstance_checks():
    """deepspeed_muon_stand_in replaces that module on a rank that builds no Muon (worker/lean_imports.py): sound
    only while DeepSpeed uses its class for isinstance checks and ZeRO's supported list, and builds one only for a
    config whose optimizer is Muon (lean_imports.builds_muon keeps the real module then)."""
    import importlib.util
    from pathlib import Path

    origin = importlib.util.find_spec("deepspeed").origin
    assert origin is not None
    runtime = Path(origin).parent / "runtime"
    uses = []
    for path in runtime.rglob("*.py"):
        if "muon" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if "MuonWithAuxAdam" in line and "import" not in line:
                uses.append(line.strip())
    assert uses, "DeepSpeed no longer names MuonWithAuxAdam: drop deepspeed_muon_stand_in"
    built = [line for line in uses if re.search(r"= MuonWithAuxAdam\(", line)]
    assert len(built) == 1, built  # engine.py, under `self.optimizer_name() == MUON_OPTIMIZER`
    for line in set(uses) - set(built):
        assert re.search(
            r"isinstance\([^)]*MuonWithAuxAdam\)|MuonWithAuxAdam (not )?in ZERO_SUPPORTED|append\(MuonWithAuxAdam\)|^#",
            line,
        ), line


def test_groups_of_ranks_share_the_batches_of_a_prepared_loader():
    """share_batches_within_groups: of 4 ranks in groups of 2, each group's ranks get the same batches, the two
    groups different ones, and together every row once, as accelerate deals them to 2 processes."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    def batches(process_index: int, num_processes: int, group_size: int) -> list[list[int]]:
        loader = prepare_data_loader(
            DataLoader(list(range(16)), batch_size=2), num_processes=num_processes, process_index=process_index
        )
        compat.share_batches_within_groups(loader, group_size)
        return [batch.tolist() for batch in loader]

    ranks = [batches(rank, 4, 2) for rank in range(4)]
    assert ranks[0] == ranks[1] == batches(0, 2, 1) and ranks[2] == ranks[3] == batches(1, 2, 1)
    assert sorted(row for batch in ranks[0] + ranks[2] for row in batch) == list(range(16))
