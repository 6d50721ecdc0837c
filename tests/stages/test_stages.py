"""Training stages pt, dpo (sigmoid/ipo/hinge/simpo), orpo and kto.

Oracles: each preference trainer our stage builds from a recipe (TRL's DPOTrainer/KTOTrainer,
our reference-free trainer over TRL's ORPO/SimPO losses) returns, on a fixed batch, the loss
computed here by hand from the paper formulas over the policy's and the reference's log-probs
(plain logits -> log_softmax, the reference being the model with the LoRA adapter disabled):
a wrong beta, loss type, weight or reference wiring fails. End to end: 2-process runs through
the real CLI, the pipeline pt -> sft -> dpo chained by recipes (each stage continuing the
previous stage's adapter), kto and orpo, each loss going down and each adapter reloading.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from launcher.recipe.load import RecipeError, load_recipe
from tests.conftest import ROOT, free_port, run_launch

TOLERANCE = 1e-6


# ---- oracle: the stage's trainer loss == the formula on the same batch --------------------------


def _trainer(recipe_file: str, overrides: list[str], tmp_path: Path):
    """The trainer our stage builds for a recipe (one process, no DeepSpeed, float64), its LoRA B
    matrices set to seeded random values so the policy differs from the reference (adapter disabled)."""
    from transformers import AutoTokenizer

    from launcher.methods import apply_method
    from launcher.model.builtin import local_model_path
    from launcher.plan import build_plan
    from launcher.registry import TRAINERS as STAGES
    from launcher.worker.load import load_model, training_arguments

    recipe = load_recipe(
        ROOT / recipe_file,
        [
            "distributed.engine=ddp",
            "distributed.zero=0",
            "distributed.nproc_per_node=1",
            f"output.dir={tmp_path / 'out'}",
            "train.gradient_checkpointing=false",
            "data.max_samples=8",
            *overrides,
        ],
    )
    plan = build_plan(recipe, cwd=str(ROOT))
    plan["world"]["backend"] = None  # this process alone: no process group
    model_dir = local_model_path(recipe["model"]["path"])
    args = training_arguments(plan)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = apply_method(load_model(plan, model_dir), recipe).to(torch.float64)  # our side exact; TRL's head is fp32
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    trainer, _ = STAGES[recipe["stage"]](plan, args, model, tokenizer, [])
    trainer.model.eval()
    return trainer, recipe["train"]


def _batch(trainer, size: int) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(size)])


def _logps(model, input_ids, attention_mask, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the completion tokens' log-probs per row, from the full logits."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask[:, 1:].float()
    return (token * mask).sum(1), mask.sum(1)


def _policy_and_reference(trainer, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model = trainer.model
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    policy, count = _logps(model, *args)
    with model.disable_adapter():
        reference, _ = _logps(model, *args)
    return policy, reference, count


def _loss(trainer, batch) -> float:
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


# TRL sums fp32 per-token log-probs (~1e-5 apart from ours over a reply): betas that keep the
# loss's sensitivity to that below the tolerance, none equal to the 0.1 default
@pytest.mark.multiproc
@pytest.mark.parametrize("loss,beta,ftx", [("sigmoid", 0.05, 0.0), ("ipo", 2.0, 0.0), ("hinge", 0.05, 0.5)])
def test_dpo_losses_equal_the_formula(loss, beta, ftx, tmp_path):
    trainer, train = _trainer(
        "recipes/dpo_tiny.yaml",
        [f"train.pref_loss={loss}", f"train.pref_beta={beta}", f"train.pref_ftx={ftx}"],
        tmp_path,
    )
    batch = _batch(trainer, 4)
    policy, reference, count = _policy_and_reference(trainer, batch)
    (pc, pr), (rc, rr), (nc, nr) = policy.chunk(2), reference.chunk(2), count.chunk(2)
    beta = train["pref_beta"]
    delta = (pc - rc) - (pr - rr)
    expected = {
        "sigmoid": -F.logsigmoid(beta * delta),
        "hinge": torch.relu(1 - beta * delta),
        "ipo": ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2,
    }[loss].mean()
    expected = expected + ftx * (-pc.sum() / nc.sum())  # SFT term: mean NLL over the chosen tokens
    assert delta.abs().min() > 1e-3, "policy equals reference: the oracle would not see a wrong reference"
    assert _loss(trainer, batch) == pytest.approx(expected.item(), abs=TOLERANCE)


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "recipe,overrides",
    [
        ("recipes/orpo_tiny.yaml", ["train.pref_beta=0.3"]),
        (
            "recipes/dpo_tiny.yaml",
            ["train.pref_loss=simpo", "train.pref_beta=2.0", "train.simpo_gamma=0.7", "train.pref_ftx=0.2"],
        ),
    ],
)
def test_reference_free_losses_equal_the_formula(recipe, overrides, tmp_path):
    trainer, train = _trainer(recipe, overrides, tmp_path)
    batch = _batch(trainer, 4)
    policy, _, count = _policy_and_reference(trainer, batch)
    (pc, pr), (nc, nr) = policy.chunk(2), count.chunk(2)
    chosen, rejected = pc / nc, pr / nr  # average log-prob per reply token
    nll = -pc.sum() / nc.sum()
    beta = train["pref_beta"]
    if recipe.endswith("orpo_tiny.yaml"):  # ORPO paper eqs. 4-7: NLL - lambda * log sigmoid(log odds ratio)
        log_odds = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
        expected = nll - beta * F.logsigmoid(log_odds).mean()
    else:  # SimPO: -log sigmoid(beta * (avg chosen - avg rejected) - gamma), plus the SFT term
        expected = -F.logsigmoid(beta * (chosen - rejected) - train["simpo_gamma"]).mean() + train["pref_ftx"] * nll
    assert _loss(trainer, batch) == pytest.approx(expected.item(), abs=TOLERANCE)


@pytest.mark.multiproc
def test_kto_loss_equals_the_formula(tmp_path):
    trainer, train = _trainer(
        "recipes/kto_tiny.yaml",
        ["train.pref_beta=0.05", "train.kto_desirable_weight=1.5", "train.kto_undesirable_weight=0.7"],
        tmp_path,
    )
    batch = _batch(trainer, 4)
    labels = batch["label"].bool()
    assert labels.any() and not labels.all(), "the batch needs desirable and undesirable replies"
    policy, reference, _ = _policy_and_reference(trainer, batch)
    kl_policy, _ = _logps(trainer.model, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    with trainer.model.disable_adapter():
        kl_reference, _ = _logps(
            trainer.model, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]
        )
    beta = train["pref_beta"]
    kl = (kl_policy - kl_reference).mean().clamp(min=0)  # KTO eq. 7: z0 from mismatched (prompt, reply) pairs
    ratio = policy - reference
    desirable = train["kto_desirable_weight"] * (1 - torch.sigmoid(beta * (ratio[labels] - kl)))
    undesirable = train["kto_undesirable_weight"] * (1 - torch.sigmoid(beta * (kl - ratio[~labels])))
    expected = torch.cat([desirable, undesirable]).mean()
    assert _loss(trainer, batch) == pytest.approx(expected.item(), abs=TOLERANCE)


@pytest.mark.multiproc
def test_kto_micro_batch_1_estimates_kl_from_the_neighbouring_row(tmp_path):
    trainer, _ = _trainer("recipes/kto_tiny.yaml", ["train.micro_batch_size=1"], tmp_path)
    rows = trainer.train_dataset
    assert len(rows) >= 4 and len(next(iter(trainer.get_train_dataloader()))["label"]) == 1
    for i in range(0, len(rows) - 1, 2):  # each of a pair of rows is scored against the other's completion
        assert rows[i]["KL_completion_ids"] == rows[i + 1]["completion_ids"] != rows[i]["completion_ids"]
        assert rows[i + 1]["KL_completion_ids"] == rows[i]["completion_ids"]


# ---- data: the preference rows are the SFT encoding of the same conversation ---------------------


@pytest.mark.unit
def test_pairs_and_blocks_are_tokenized_like_sft(tmp_path):
    from transformers import AutoTokenizer

    from launcher.data.blocks import build_blocks
    from launcher.data.pairs import build_kto_data, build_pair_data
    from launcher.data.pipeline import load_examples
    from launcher.data.tokenize import IGNORE_INDEX
    from launcher.model.builtin import local_model_path

    tokenizer = AutoTokenizer.from_pretrained(local_model_path("builtin:tiny-qwen2"))
    cfg = load_recipe(ROOT / "recipes/dpo_tiny.yaml")["data"]
    pairs = build_pair_data(["demo_pref"], cfg, tokenizer).rows
    example = load_examples(["demo_pref"], cfg, "preference")[1]  # multi-turn prompt
    # oracle: the chat template renders prompt + chosen as prompt_ids + chosen_ids (up to the text after the eos)
    full = tokenizer.apply_chat_template(example.messages + [example.chosen], tokenize=True)
    full = full["input_ids"] if hasattr(full, "keys") else full
    row = pairs[1]
    assert full[: len(row["prompt_ids"]) + len(row["chosen_ids"])] == row["prompt_ids"] + row["chosen_ids"]
    assert row["chosen_ids"][-1] == tokenizer.eos_token_id and row["rejected_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row["chosen_ids"]).startswith("No, it is usually blue.")
    kto = build_kto_data(["demo_kto"], load_recipe(ROOT / "recipes/kto_tiny.yaml")["data"], tokenizer).rows
    assert [r["label"] for r in kto[:2]] == [True, False]
    assert tokenizer.decode(kto[0]["completion_ids"]) == "9" + tokenizer.eos_token
    # cutoff: a longer row is cut within it (tests/test_lf_data.py checks the lengths), never dropped
    cut = len(row["prompt_ids"]) + 2
    short = build_pair_data(["demo_pref"], {**cfg, "cutoff_len": cut}, tokenizer)
    longest = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in short.rows]
    assert len(short.rows) == len(pairs) and short.dropped == 0 and max(longest) <= cut
    assert short.truncated == sum(
        1 for r in pairs if len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > cut
    )
    # pt: documents joined with eos, cut into whole blocks, every token trained
    pt_cfg = load_recipe(ROOT / "recipes/pt_tiny.yaml")["data"]
    data = build_blocks(["demo_pt"], pt_cfg, tokenizer)
    texts = [json.loads(line)["text"] for line in (ROOT / "data/demo_pt.jsonl").read_text().splitlines()]
    stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    assert [t for b in data.blocks for t in b["input_ids"]] == stream[: len(stream) - data.tail_tokens]
    assert {len(b["input_ids"]) for b in data.blocks} == {pt_cfg["cutoff_len"]} and data.tail_tokens < pt_cfg[
        "cutoff_len"
    ]
    assert all(b["labels"] == b["input_ids"] and IGNORE_INDEX not in b["labels"] for b in data.blocks)
    # a .txt corpus: one document per non-blank line; shorter than one block, it is one block
    (tmp_path / "corpus.txt").write_text("Bees make wax.\n\nDrones do not sting.\n", encoding="utf-8")
    small = build_blocks([str(tmp_path / "corpus.txt")], pt_cfg, tokenizer)
    eos = [tokenizer.eos_token_id]
    assert small.documents == 2 and [b["input_ids"] for b in small.blocks] == [
        tokenizer("Bees make wax.")["input_ids"] + eos + tokenizer("Drones do not sting.")["input_ids"] + eos
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    "recipe,override,key",
    [
        ("recipes/sft_tiny.yaml", "train.pref_beta=0.2", "train.pref_beta"),  # a dpo key with stage sft
        ("recipes/kto_tiny.yaml", "train.pref_loss=ipo", "train.pref_loss"),  # a dpo key with stage kto
        ("recipes/dpo_tiny.yaml", "train.kto_desirable_weight=2", "train.kto_desirable_weight"),
        ("recipes/dpo_tiny.yaml", "train.simpo_gamma=1", "train.simpo_gamma"),  # SimPO margin on the sigmoid loss
        ("recipes/dpo_tiny.yaml", "train.pref_loss=dpo", "train.pref_loss"),
        ("recipes/dpo_tiny.yaml", "train.pref_beta=0", "train.pref_beta"),
    ],
)
def test_stage_keys_are_refused_where_they_do_not_apply(recipe, override, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(ROOT / recipe, [override])


@pytest.mark.unit
def test_adapter_continuation_needs_a_lora_adapter(tmp_path):
    with pytest.raises(RecipeError, match="model.adapter continues a LoRA adapter"):
        load_recipe(ROOT / "recipes/dpo_tiny.yaml", ["model.adapter=outputs/sft_tiny", "method={name: full}"])
    proc = run_launch(["plan", "recipes/dpo_tiny.yaml", f"model.adapter={tmp_path}"], timeout=60)
    assert proc.returncode == 2 and "no adapter_config.json there" in proc.stderr, proc.stderr


@pytest.mark.unit
@pytest.mark.parametrize("stage", ["pt", "dpo", "kto", "orpo"])
def test_qwen2_recipes_plan_offline(stage):
    proc = run_launch(["plan", f"recipes/{stage}_qwen2.yaml"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"stage: {stage}" in proc.stdout and "Qwen/Qwen2-7B-Instruct" in proc.stdout


# ---- end to end: 2 processes through the real CLI ------------------------------------------------
# Each step sees the same data (max_samples = one global batch), so each loss must fall.
FAST = [
    "train.max_steps=4",
    "train.logging_steps=1",
    "train.save_steps=100",
    "train.warmup_ratio=0",
    "train.grad_accum=1",
]
REWARDS = {"train/rewards/chosen", "train/rewards/rejected", "train/rewards/accuracies", "train/rewards/margins"}


def _stage(tmp_path: Path, recipe: str, name: str, overrides: list[str]) -> tuple[Path, list[float]]:
    from tests.worker.test_e2e import _losses

    out = tmp_path / name
    proc = run_launch([recipe, f"output.dir={out}", f"distributed.master_port={free_port()}", *FAST, *overrides])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = _losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"
    return out, losses


def _lora(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


@pytest.mark.multiproc
def test_pipeline_pt_sft_dpo_each_stage_continues_the_previous_adapter(tmp_path, warm):
    """Continued pre-training (ZeRO-3) -> SFT from that adapter (ZeRO-2) -> DPO from the SFT adapter
    (ZeRO-3), each from its recipe; the DPO reference is the SFT model, so the first DPO loss is ln 2."""
    from tests.worker.test_e2e import _check_adapter, _tensorboard_tags

    pt, _ = _stage(tmp_path, "recipes/pt_tiny.yaml", "pt", ["data.max_samples=5"])
    assert "train/loss" in _tensorboard_tags(pt)
    sft, _ = _stage(
        tmp_path, "recipes/sft_tiny.yaml", "sft", [f"model.adapter={pt}", "distributed.zero=2", "data.max_samples=8"]
    )
    dpo, losses = _stage(
        tmp_path, "recipes/dpo_tiny.yaml", "dpo", [f"model.adapter={sft}", "distributed.zero=3", "data.max_samples=4"]
    )
    assert losses[0] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-4), (
        "policy and reference differ at step 1: the reference is not the SFT model"
    )
    assert not (dpo / "ref").exists(), "TRL's frozen reference copy was saved beside the trained adapter"
    assert not [key for key in _lora(dpo) if ".ref." in key], "the reference copy was saved into the adapter"
    weights = [_lora(out) for out in (pt, sft, dpo)]
    assert weights[0].keys() == weights[1].keys() == weights[2].keys()  # one adapter, continued
    for before, after in zip(weights, weights[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before), "a stage left the adapter unchanged"
    _check_adapter(dpo)  # loads with PEFT onto the base and changes its output
    assert REWARDS <= _tensorboard_tags(dpo)


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "stage,overrides,metrics",
    [
        # KTO's replies are unpaired: no pairwise accuracy, but the KL estimate; micro batch 1, as LLaMA-Factory's examples
        (
            "kto",
            ["distributed.zero=2", "data.max_samples=2", "train.micro_batch_size=1"],
            REWARDS - {"train/rewards/accuracies"} | {"train/kl"},
        ),
        ("orpo", ["data.max_samples=4"], REWARDS),
    ],
)
def test_preference_stage_runs_on_two_processes(stage, overrides, metrics, tmp_path, warm):
    from tests.worker.test_e2e import _check_adapter, _tensorboard_tags

    out, _ = _stage(tmp_path, f"recipes/{stage}_tiny.yaml", stage, overrides)
    _check_adapter(out)
    assert metrics <= _tensorboard_tags(out)
