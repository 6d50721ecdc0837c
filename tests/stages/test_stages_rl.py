"""Reward model (rm) and PPO stages: the pairwise loss against a hand computation, and
2-process runs through the real `launch` CLI (rm, then PPO rewarded by that rm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from launcher.cli import main
from tests.conftest import RM_PAIRS, free_port, run_launch

RM_TINY = "recipes/rm_tiny.yaml"


def _plan(tmp_path: Path, recipe: str, overrides: list[str]) -> dict:
    from launcher.plan import build_plan
    from launcher.recipe.load import load_recipe

    return build_plan(load_recipe(recipe, [f"output.dir={tmp_path / 'out'}", *overrides]))


@pytest.mark.unit
def test_reward_loss_is_minus_logsigmoid_of_the_score_difference(tmp_path):
    """Our rm stage's trainer, on a fixed batch of real pairs, computes exactly
    -logsigmoid(r_chosen - r_rejected) averaged over pairs, r read from the score head."""
    from transformers import AutoTokenizer, TrainingArguments

    from launcher.methods import apply_method
    from launcher.model.builtin import materialize
    from launcher.stages.rm import build_trainer
    from launcher.worker.load import load_model

    plan = _plan(
        tmp_path,
        RM_TINY,
        [
            "distributed.engine=ddp",
            "distributed.zero=0",
            "distributed.nproc_per_node=1",
            "data.cutoff_len=64",
            "train.gradient_checkpointing=false",
        ],
    )
    model_dir = materialize(plan["recipe"]["model"]["path"])
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], remove_unused_columns=False)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = apply_method(load_model(plan, model_dir), plan["recipe"])
    trainer, summary = build_trainer(plan, args, model, tokenizer, [])
    assert summary["examples"] >= 2
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():  # make the score head non-trivial so the pairs' scores differ clearly
        for name, param in model.named_parameters():
            if "score" in name and param.requires_grad:
                param.normal_(0, 0.5)
        loss = trainer.compute_loss(model, dict(batch))
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = scores[:2], scores[2:]
    assert not torch.allclose(chosen, rejected)
    expected = -F.logsigmoid(chosen - rejected).mean()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


# ---- 2-process runs through the real CLI: rm (ZeRO-2), then PPO (ZeRO-3) rewarded by it ----------------


def _losses(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def _launch(recipe: str, out: Path, overrides: list[str]):
    proc = run_launch([recipe, f"output.dir={out}", f"distributed.master_port={free_port()}", *overrides])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return _losses(out)


def _scalar_tags(out: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "runs"))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def _reloaded_scores(out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the training pairs by the saved reward model: base + adapter (LoRA and score head)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from launcher.data.pairs import scored_pairs
    from launcher.model.builtin import materialize

    plan = json.loads((out / "plan.json").read_text())
    base_dir = materialize(plan["recipe"]["model"]["path"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(out)).eval()
    data_cfg = plan["recipe"]["data"]
    pairs = scored_pairs(data_cfg["datasets"], data_cfg, tokenizer).rows
    assert len(pairs) == RM_PAIRS
    with torch.no_grad():

        def score(ids: list[int]) -> float:
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

        return (
            torch.tensor([score(p["chosen_ids"]) for p in pairs]),
            torch.tensor([score(p["rejected_ids"]) for p in pairs]),
        )


@pytest.mark.multiproc
def test_rm_two_processes_learns_to_rank_and_reloads(rm_run):
    out = rm_run
    logs = _losses(out)
    assert len(logs) == 6
    assert logs[-1]["loss"] < logs[0]["loss"], [e["loss"] for e in logs]
    assert {"train/accuracy", "train/margin", "train/loss"} <= _scalar_tags(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    # The first logged step measured the untrained model on these same pairs; the reloaded
    # adapter + score head must rank them better (a lost or random head would not).
    chosen, rejected = _reloaded_scores(out)
    accuracy, margin = (chosen > rejected).float().mean().item(), (chosen - rejected).mean().item()
    assert accuracy > logs[0]["accuracy"] and margin > logs[0]["margin"], (accuracy, margin, logs[0])
    loss = -F.logsigmoid(chosen - rejected).mean().item()
    assert loss < logs[0]["loss"], (loss, logs[0]["loss"])


def _starting_adapter(folder: Path) -> Path:
    """A LoRA adapter with non-zero weights, standing in for an SFT run's output (model.adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from launcher.model.builtin import materialize

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(folder)
    return folder


def _logits(adapter: Path | None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from launcher.model.builtin import materialize

    model = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4, 5, 6]])).logits


@pytest.mark.multiproc
def test_ppo_two_processes_from_an_sft_adapter_and_the_rm_output(rm_run, tmp_path):
    """PPO continues the starting adapter, rewarded by the rm run; the KL reference is a frozen
    copy of that adapter (so the KL starts at exactly 0 although the adapter is far from the base).
    ppo_epochs 2: step 2 trains again on step 1's rollout, step 3 samples a new one."""
    from safetensors.torch import load_file

    rm_out = rm_run
    start, out = _starting_adapter(tmp_path / "sft"), tmp_path / "ppo"
    logs = _launch(
        "recipes/ppo_tiny.yaml",
        out,
        [
            f"train.reward_model={rm_out}",
            f"model.adapter={start}",
            "distributed.zero=3",
            "train.max_steps=3",
            "train.logging_steps=1",
            "train.ppo_epochs=2",
            "train.save_steps=3",
            "data.max_samples=12",
            "train.micro_batch_size=2",
            "train.max_new_tokens=8",
        ],
    )
    assert len(logs) == 3
    metrics = ("ppo/kl", "ppo/score", "ppo/value_loss", "ppo/policy_loss", "ppo/clipfrac", "ppo/response_length")
    for entry in logs:
        assert all(name in entry and entry[name] == entry[name] for name in metrics), entry
    assert logs[0]["ppo/kl"] == pytest.approx(0, abs=1e-6)
    assert logs[1]["ppo/score"] == logs[0]["ppo/score"]  # the same rollout, replayed
    # the update was a step down the surrogate at ratio 1: on the same rollout it must now be lower
    assert logs[1]["ppo/policy_loss"] < logs[0]["ppo/policy_loss"] - 1e-5, [e["ppo/policy_loss"] for e in logs]
    # and moves away from it as it trains (the sampled estimate log p - log p_ref may be of either sign)
    assert any(abs(entry["ppo/kl"]) > 1e-4 for entry in logs[1:]), [entry["ppo/kl"] for entry in logs]
    assert {f"train/{name}" for name in metrics} <= _scalar_tags(out)
    base, started, trained = _logits(None), _logits(start), _logits(out)
    assert not torch.allclose(base, started), "the starting adapter should differ from the base"
    assert not torch.allclose(started, trained), "the saved policy adapter holds no PPO update"
    from launcher.model.builtin import materialize

    hidden = json.loads((Path(materialize("builtin:tiny-qwen2")) / "config.json").read_text())["hidden_size"]
    value_head = load_file(out / "value_head.safetensors")  # initialised to zero: trained values only
    assert value_head["weight"].shape == (1, hidden) and value_head["weight"].abs().sum() > 0
    # the last checkpoint's ZeRO-3 shards consolidate offline into what the run saved: adapter and value head
    consolidated = tmp_path / "consolidated"
    assert main(["consolidate", str(out / "checkpoint-3"), "--out", str(consolidated)]) == 0
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        saved, offline = load_file(out / name), load_file(consolidated / name)
        assert saved.keys() == offline.keys(), name
        assert all(torch.equal(saved[key], offline[key]) for key in saved), name


# ---- refusals at load/plan time, and the Qwen2-7B recipes planning offline ---------------------------


def _fake_rm_output(folder: Path, model_path: str) -> Path:
    """What `launch plan` reads of an rm run's output.dir: its plan.json and the saved adapter's config."""
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps({"recipe": {"stage": "rm", "model": {"path": model_path}}}))
    (folder / "adapter_config.json").write_text("{}")
    return folder


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides,reason",
    [
        (["method={name: full}"], "stage: ppo needs method.name: lora, got full"),
        (["method.variant=pissa", "distributed.zero=2"], "method.variant: pissa cannot run with stage: ppo"),
        (["distributed.offload=all"], "distributed.offload: all cannot run with stage: ppo"),
        (["data.val_size=0.1"], "stage: ppo has no evaluation pass"),
        (["data.packing=greedy"], "data.packing: greedy has no effect in stage: ppo"),
        (["train.reward_model=null"], "stage: ppo needs train.reward_model"),
    ],
)
def test_ppo_refuses_combinations_that_cannot_run(overrides, reason):
    from launcher.recipe.load import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=rf"{reason}.*Fix:"):
        load_recipe("recipes/ppo_tiny.yaml", overrides)


@pytest.mark.unit
def test_rm_refuses_prefix_tuning():
    from launcher.recipe.load import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=r"method.name: prefix cannot train stage: rm.*Fix:"):
        load_recipe(RM_TINY, ["method={name: prefix}", "train.gradient_checkpointing=false", "distributed.zero=2"])


@pytest.mark.unit
def test_reward_model_must_be_a_finished_rm_run_on_the_same_base(tmp_path):
    from launcher.recipe.load import RecipeError

    with pytest.raises(RecipeError, match="no such directory.*Fix: run a stage: rm recipe first"):
        _plan(tmp_path, "recipes/ppo_tiny.yaml", [f"train.reward_model={tmp_path / 'missing'}"])
    sft_run = tmp_path / "sft"
    sft_run.mkdir()
    (sft_run / "plan.json").write_text(
        json.dumps({"recipe": {"stage": "sft", "model": {"path": "builtin:tiny-qwen2"}}})
    )
    with pytest.raises(RecipeError, match="not the output.dir of a stage: rm run"):
        _plan(tmp_path, "recipes/ppo_tiny.yaml", [f"train.reward_model={sft_run}"])
    other_base = _fake_rm_output(tmp_path / "rm_other", "Qwen/Qwen2-7B-Instruct")
    with pytest.raises(RecipeError, match="adapter over Qwen/Qwen2-7B-Instruct, but model.path is builtin:tiny-qwen2"):
        _plan(tmp_path, "recipes/ppo_tiny.yaml", [f"train.reward_model={other_base}"])


@pytest.mark.unit
def test_qwen2_rm_and_ppo_recipes_plan_offline(tmp_path):
    rm_plan = _plan(tmp_path, "recipes/rm_qwen2.yaml", [])
    assert rm_plan["recipe"]["stage"] == "rm" and rm_plan["deepspeed"]["zero_optimization"]["stage"] == 3
    rm_out = _fake_rm_output(tmp_path / "rm_qwen2", "Qwen/Qwen2-7B-Instruct")
    sft_out = tmp_path / "sft_qwen2"  # the SFT run the recipe continues (model.adapter)
    sft_out.mkdir()
    (sft_out / "adapter_config.json").write_text("{}")
    ppo_plan = _plan(tmp_path, "recipes/ppo_qwen2.yaml", [f"train.reward_model={rm_out}", f"model.adapter={sft_out}"])
    train = ppo_plan["recipe"]["train"]
    assert (train["max_new_tokens"], train["temperature"], train["top_p"]) == (256, 0.9, 0.95)
