"""GaLore, APOLLO, BAdam, Adam-mini and Muon step the tiny model as their libraries do when used directly.

Each case builds the optimizer through the launcher's path (the recipe's keys, launcher/worker/optimizers.install,
transformers' Trainer.create_optimizer) and through the library by hand from the same parameters, with the groups
written out here by name (weight decay on the weights, none on biases and norms; the decoder's linear weights for
the projected / orthogonalised group), then takes two steps on the same batch from the same seed: the weights must
be equal, and must have moved."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from launcher.recipe.load import load_recipe
from launcher.recipe.optimizers import trainer_optim
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

TINY = ROOT / "recipes" / "sft_tiny.yaml"
LR, WD, BETAS, EPS = 1.0e-2, 0.1, (0.9, 0.999), 1.0e-8
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def base():
    """The tiny model, stepped on one thread: torch's default one per core crawls on a shared machine."""
    from transformers import AutoModelForCausalLM

    from launcher.model.builtin import materialize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32)
    torch.set_num_threads(threads)


def _launcher_optimizer(model, overrides: list[str], tmp_path, method: str = "full"):
    from transformers import Trainer, TrainingArguments

    from launcher.worker.optimizers import install

    recipe = load_recipe(
        TINY,
        ["distributed.engine=ddp", "distributed.nproc_per_node=1", f"method.name={method}", f"train.lr={LR}"]
        + [f"train.weight_decay={WD}", *overrides],
    )
    train = recipe["train"]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=train["lr"],
        weight_decay=train["weight_decay"],
        optim=trainer_optim(train["optimizer"]),
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args)
    install(trainer, recipe)
    return trainer.create_optimizer()


def _linear_weights(model, targets=LINEAR) -> list:
    return [p for n, p in model.named_parameters() if n.endswith(".weight") and n.split(".")[-2] in targets]


def _groups(model, skip: list) -> list[dict]:
    skipped = {id(p) for p in skip}
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in skipped]
    no_decay = [p for n, p in rest if "bias" in n or "norm" in n]
    return [
        {"params": [p for n, p in rest if not ("bias" in n or "norm" in n)], "weight_decay": WD},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _galore(model, rank=16, targets=LINEAR):
    from galore_torch import GaLoreAdamW

    weights = _linear_weights(model, targets)
    projected = {"params": weights, "weight_decay": WD, "rank": rank, "update_proj_gap": 200, "scale": 2.0}
    return GaLoreAdamW([*_groups(model, weights), {**projected, "proj_type": "std"}], lr=LR, betas=BETAS, eps=EPS)


def _apollo(model):
    from apollo_torch import APOLLOAdamW

    weights = _linear_weights(model)
    projected = {"params": weights, "weight_decay": WD, "rank": 16, "update_proj_gap": 200, "scale": 32.0}
    projected |= {"proj_type": "std", "proj": "random", "scale_type": "channel"}
    return APOLLOAdamW([*_groups(model, weights), projected], lr=LR, betas=BETAS, eps=EPS)


def _badam(model):
    from badam import BlockOptimizer

    base = torch.optim.AdamW(_groups(model, []), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    named = list(model.named_parameters())
    return BlockOptimizer(base, named, switch_block_every=50, switch_mode="ascending", verbose=0)


def _adam_mini(model):
    from adam_mini import Adam_mini

    config = model.config
    return Adam_mini(
        model.named_parameters(),
        lr=LR,
        betas=BETAS,
        eps=EPS,
        weight_decay=WD,
        dim=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
        verbose=False,
    )


class _Both:
    def __init__(self, *parts):
        self.parts = parts

    def step(self):
        for part in self.parts:
            part.step()

    def zero_grad(self):
        for part in self.parts:
            part.zero_grad()


def _muon(model, adjust="match_rms_adamw", momentum=0.95):
    weights = _linear_weights(model)
    muon = torch.optim.Muon(weights, lr=LR, weight_decay=WD, momentum=momentum, ns_steps=5, adjust_lr_fn=adjust)
    return _Both(muon, torch.optim.AdamW(_groups(model, weights), lr=LR, betas=BETAS, eps=EPS))


def _two_steps(model, optimizer) -> None:
    torch.manual_seed(0)  # APOLLO's random projection and BAdam's random order draw from it
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


CASES: list[tuple[str, list[str], Callable]] = [
    ("galore", ["train.optimizer=galore_adamw"], _galore),
    (
        "galore-args",
        ["train.optimizer=galore_adamw", "train.galore.rank=4", "train.galore.target=[q_proj,down_proj]"],
        lambda m: _galore(m, rank=4, targets=("q_proj", "down_proj")),
    ),
    ("apollo", ["train.optimizer=apollo_adamw"], _apollo),
    ("badam", ["train.optimizer=badam"], _badam),
    ("adam-mini", ["train.optimizer=adam_mini"], _adam_mini),
    ("muon", ["train.optimizer=muon"], _muon),
    (
        "muon-args",
        ["train.optimizer=muon", "train.muon.adjust_lr=original", "train.muon.momentum=0.9"],
        lambda m: _muon(m, "original", 0.9),
    ),
]


def _bytes(state) -> int:
    """The tensors' bytes in an optimizer state (GaLore's and APOLLO's projector objects included)."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(_bytes(item) for item in state)
    if isinstance(state, dict):
        return sum(_bytes(item) for item in state.values())
    return _bytes(vars(state)) if type(state).__module__.startswith(("galore_torch", "apollo_torch")) else 0


def _state_bytes(optimizer) -> int:
    if hasattr(optimizer, "parts"):  # Muon beside AdamW
        return sum(_state_bytes(part) for part in optimizer.parts)
    if hasattr(optimizer, "base_optimizer"):  # BAdam: AdamW's state and the fp32 copy of the active layer
        return _state_bytes(optimizer.base_optimizer) + _bytes(list(optimizer.param_idx2hp.values()))
    return _bytes(list(optimizer.state.values()))


def _planned_bytes(overrides: list[str]) -> float:
    """What the memory planner counts for the optimizer's state on the tiny model (launcher/plan/memory.py)."""
    from launcher.model.shape import model_shape
    from launcher.plan.memory import _optimizer_bytes, parameter_split

    recipe = load_recipe(
        TINY, ["distributed.engine=ddp", "distributed.nproc_per_node=1", "method.name=full", *overrides]
    )
    _, trainable = parameter_split(model_shape("builtin:tiny-qwen2")[0], recipe["method"])
    return _optimizer_bytes(trainable, recipe["train"])


@pytest.mark.parametrize("overrides,direct", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_launchers_optimizer_steps_as_its_library(base, overrides, direct, tmp_path):
    """... holds the state the memory planner counts for it (within 1%: Adam-mini's per-block moments), and
    leaves the weights as they are on a step whose gradients the NaN guard dropped (monitoring/health.py)."""
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    optimizer = _launcher_optimizer(ours, overrides, tmp_path)
    _two_steps(ours, optimizer)
    _two_steps(theirs, direct(theirs))
    assert _state_bytes(optimizer) == pytest.approx(_planned_bytes(overrides), rel=0.01)
    before = [p.detach().clone() for p in ours.parameters()]
    ours.zero_grad(set_to_none=True)
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(ours.parameters(), before))
    moved = 0
    for (name, mine), (_, reference), (_, before) in zip(
        ours.named_parameters(), theirs.named_parameters(), base.named_parameters()
    ):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0, msg=name)
        moved += not torch.equal(mine, before)
    assert moved > 0


def test_badam_trains_one_layer_at_a_time_in_the_recipes_order(base, tmp_path):
    """switch_mode descending starts at the last decoder layer; no other parameter moves within its interval."""
    model = copy.deepcopy(base)
    _two_steps(
        model, _launcher_optimizer(model, ["train.optimizer=badam", "train.badam.switch_mode=descending"], tmp_path)
    )
    changed = {n for (n, p), (_, b) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, b)}
    last = f"model.layers.{model.config.num_hidden_layers - 1}."
    assert changed and all(n.startswith(last) for n in changed), changed


def test_muon_orthogonalises_the_matrices_and_leaves_the_rest_to_adamw(base, tmp_path):
    """torch's Muon refuses 1-D parameters: they, the embeddings and the head go to AdamW."""
    optimizer = _launcher_optimizer(copy.deepcopy(base), ["train.optimizer=muon"], tmp_path)
    muon, adamw = optimizer.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert any(p.ndim == 1 for g in adamw.param_groups for p in g["params"])
    # the scheduler's rate reaches both parts, and a checkpoint restores both
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    assert muon.param_groups[0]["lr"] == adamw.param_groups[0]["lr"] == 0.5


def test_muon_under_lora_trains_the_adapters_matrices_with_muon_alone(base, tmp_path):
    """LoRA trains matrices only, so there is no AdamW part (torch refuses an optimizer without parameters)."""
    from peft import LoraConfig, get_peft_model

    ours = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    theirs = copy.deepcopy(ours)
    initial = [p.detach().clone() for p in ours.parameters() if p.requires_grad]
    _two_steps(ours, _launcher_optimizer(ours, ["train.optimizer=muon"], tmp_path, method="lora"))
    adapter = [p for p in theirs.parameters() if p.requires_grad]
    _two_steps(theirs, torch.optim.Muon(adapter, lr=LR, weight_decay=WD, adjust_lr_fn="match_rms_adamw"))
    for (name, mine), (_, reference) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0, msg=name)
    trained = [p for p in ours.parameters() if p.requires_grad]
    assert all(not torch.equal(p, before) for p, before in zip(trained, initial))
