"""Stage grpo: the built-in rewards on hand-made completions, the recipe refusals made before launch (rewards,
batch arithmetic, rollout engine), the advantages and loss of TRL's GRPOTrainer as we build it against a hand
computation, and a 2-process run of recipes/grpo_tiny.yaml through the real CLI whose reward rises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import RecipeError
from launcher.stages import grpo_rewards
from tests.conftest import free_port, run_launch

GRPO_TINY = "recipes/grpo_tiny.yaml"


def _recipe(overrides: list[str]) -> dict:
    from launcher.recipe.load import load_recipe

    return load_recipe(GRPO_TINY, overrides)


def _plan(tmp_path: Path, overrides: list[str]) -> dict:
    from launcher.plan import build_plan

    return build_plan(_recipe([f"output.dir={tmp_path / 'out'}", *overrides]))


# ---- the built-in rewards -------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("<think>7 + 5</think><answer>12</answer>", "7 + 5 = 12\n#### 12", 1.0),
        ("<think>hm</think><answer>13</answer>", "#### 12", 0.0),
        ("so the total is 1,000.", "#### 1000", 1.0),  # thousands separator, trailing period
        ("The answer is $\\boxed{\\frac{1}{2}}$", "0.5", 1.0),  # LaTeX fraction against a decimal
        ("\\boxed{\\text{Paris}}", "paris", 1.0),  # \\text{} and case
        ("I think 3, no wait, 4", "#### 3", 0.0),  # the last number counts
        ("no number here", "#### 3", 0.0),
        ("<answer>-2.50</answer>", "#### -5/2", 1.0),
    ],
)
def test_accuracy_compares_the_final_answers(completion, answer, expected):
    assert grpo_rewards.accuracy(completions=[completion], answer=[answer]) == [expected]


@pytest.mark.unit
def test_format_and_length_rewards():
    reward = grpo_rewards.format_reward(grpo_rewards.FORMAT_PATTERN)
    completions = [
        "<think>a\nb</think>\n<answer>3</answer>",  # newlines inside and between: fine
        "  <think>x</think><answer>3</answer>\n",  # surrounding space is stripped
        "<answer>3</answer>",  # no reasoning block
        "<think>x</think><answer>3</answer> and more",  # text after the answer
    ]
    assert reward(completions=completions) == [1.0, 1.0, 0.0, 0.0]
    assert reward.__name__ == "format"
    digits = grpo_rewards.format_reward(r"\d+")
    assert digits(completions=["42", "4 2"]) == [1.0, 0.0]
    length = grpo_rewards.length_reward(8)
    assert length(completion_ids=[[], [1, 2], [1] * 8, [1] * 9]) == [1.0, 0.75, 0.0, 0.0]


# ---- refusals before launch -----------------------------------------------------------------------------


def _write_reward(folder: Path, source: str) -> str:
    path = folder / "my_reward.py"
    path.write_text(source)
    return str(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("source", "function", "reason"),
    [
        (None, "score", "no such file"),
        ("def other(completions, **kwargs):\n    return []\n", "score", "defines no top-level function 'score'"),
        ("def score(completions):\n    return []\n", "score", "takes no **kwargs"),
        ("def score(completions, solution, **kwargs):\n    return []\n", "score", "requires ['solution']"),
        ("def score(completions, **kwargs)\n", "score", "is not valid Python"),
    ],
)
def test_a_user_reward_that_cannot_run_is_refused_at_load(tmp_path, source, function, reason):
    path = _write_reward(tmp_path, source) if source else str(tmp_path / "missing.py")
    with pytest.raises(RecipeError) as err:
        _recipe([f"train.rewards=[{path}:{function}]"])
    message = str(err.value)
    assert reason in message and path in message and "Fix:" in message


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["train.rewards=[accuracy, bogus]"], "'bogus' is none of"),
        (["train.rewards=[format, format]"], "names a reward twice"),
        (["train.reward_weights=[1.0, 2.0]"], "2 weights for 1 rewards"),
        (["train.rewards=[reward_model]"], "train.reward_model is not set"),
        (["train.reward_model=outputs/rm_tiny"], "does not use it"),
        (["train.format_pattern=(unclosed"], "is no regex"),
        (["method.name=prefix"], "cannot train stage: grpo"),
        (["data.val_size=0.1"], "stage: grpo has no evaluation pass"),
        (["data.packing=neat"], "data.packing: neat has no effect in stage: grpo"),
    ],
)
def test_grpo_refuses_combinations_that_cannot_run(overrides, reason):
    with pytest.raises(RecipeError, match="Fix:") as err:
        _recipe(overrides)
    assert reason in str(err.value)


@pytest.mark.unit
def test_num_generations_must_divide_the_completions_of_a_step(tmp_path):
    """micro 4 x grad_accum 1 x 2 processes = 8 completions a step: 3 per prompt cannot make whole groups."""
    world = ["distributed.nproc_per_node=2", "train.micro_batch_size=4"]
    with pytest.raises(RecipeError) as err:
        _plan(tmp_path, [*world, "train.num_generations=3"])
    message = str(err.value)
    assert "train.num_generations = 3" in message and "= 8" in message
    assert "train.grad_accum to a multiple of 3 (e.g. 3)" in message and "[2, 4, 8]" in message
    plan = _plan(tmp_path, [*world, "train.num_generations=3", "train.grad_accum=3"])  # the fix it names works
    assert plan["stage"]["completions_per_step"] == 24 and plan["stage"]["prompts_per_step"] == 8


@pytest.mark.unit
def test_rollout_engine_on_cpu(tmp_path):
    assert _plan(tmp_path, [])["stage"]["rollout_why"] == "auto: no GPU, so transformers' generate"
    with pytest.raises(RecipeError, match="needs a GPU.*Fix: set train.rollout_engine: hf"):
        _plan(tmp_path, ["train.rollout_engine=vllm"])


@pytest.mark.unit
def test_grpo_recipes_plan_offline(tmp_path):
    """grpo_qwen2.yaml names a 7B model and GSM8K, neither here: `launch plan` still answers (hub offline)."""
    proc = run_launch(["plan", "recipes/grpo_qwen2.yaml", f"output.dir={tmp_path / 'q'}"], env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "# stage grpo" in proc.stdout and "rewards: ['accuracy', 'format']" in proc.stdout


# ---- advantages and loss against a hand computation -----------------------------------------------------


def _trainer(tmp_path: Path, loss_type: str, reward_file: str):
    import torch
    from transformers import AutoTokenizer, TrainingArguments

    from launcher.methods import apply_method
    from launcher.model.builtin import materialize
    from launcher.stages.grpo import build_trainer
    from launcher.worker.load import load_model

    plan = _plan(
        tmp_path,
        [
            "distributed.engine=ddp",
            "distributed.zero=0",
            "distributed.nproc_per_node=1",
            f"train.loss_type={loss_type}",
            f"train.reward_scaling={'none' if loss_type == 'dr_grpo' else 'group'}",
            f"train.rewards=[{reward_file}:ascii_share, length]",
            "train.reward_weights=[1.0, 0.5]",
            "train.max_new_tokens=8",
            "train.num_generations=4",
            "data.cache=false",
        ],
    )
    model_dir = materialize(plan["recipe"]["model"]["path"])
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
        per_device_train_batch_size=8,  # two groups of 4 completions
        gradient_accumulation_steps=1,
    )
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = apply_method(load_model(plan, model_dir), plan["recipe"])
    trainer, summary = build_trainer(plan, args, model, tokenizer, [])
    return trainer, model, summary


@pytest.mark.unit
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_advantages_and_loss_equal_a_hand_computation(tmp_path, loss_type):
    """On completions the trainer samples itself: the advantages are the weighted rewards (our functions, on the
    decoded completions) minus their group mean (grpo: over the group's std + 1e-4), and the clipped loss,
    with old log-probabilities apart from the current ones, is the hand formula of the loss type."""
    import torch

    reward_file = "recipes/rewards/ascii_share.py"
    trainer, model, summary = _trainer(tmp_path, loss_type, reward_file)
    assert summary["examples"] == 48
    groups, generations = 2, 4
    rows = [trainer.train_dataset[i] for i in range(groups) for _ in range(generations)]
    model.train()
    batch = trainer._generate_and_score_completions(rows)
    tokenizer = trainer.processing_class
    completion_ids = [ids[mask.bool()].tolist() for ids, mask in zip(batch["completion_ids"], batch["completion_mask"])]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    user = grpo_rewards.load_user_function(reward_file, "ascii_share")
    rewards = torch.tensor(user(completions=texts)) + 0.5 * torch.tensor(
        grpo_rewards.length_reward(8)(completion_ids=completion_ids)
    )
    grouped = rewards.view(groups, generations)
    centred = grouped - grouped.mean(1, keepdim=True)
    expected = centred if loss_type == "dr_grpo" else centred / (grouped.std(1, keepdim=True) + 1e-4)
    assert expected.abs().sum() > 0  # the rewards differ within a group: a test that can fail
    torch.testing.assert_close(batch["advantages"], expected.flatten(), rtol=0, atol=1e-5)

    # the loss on the first micro batch, with old log-probabilities 0.3 apart so that the clip acts
    micro = {k: (v[:4] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()}
    prompt, completion = micro["prompt_ids"], micro["completion_ids"]
    mask = micro["completion_mask"].float()
    with torch.no_grad():
        logits = model(
            input_ids=torch.cat([prompt, completion], 1),
            attention_mask=torch.cat([micro["prompt_mask"], micro["completion_mask"]], 1),
        ).logits[:, prompt.shape[1] - 1 : -1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    shift = torch.where(torch.arange(completion.shape[1]) % 2 == 0, 0.3, -0.3)
    micro["old_per_token_logps"] = logps + shift
    ratio = torch.exp(logps - micro["old_per_token_logps"])
    advantage = micro["advantages"].unsqueeze(1)
    per_token = -torch.min(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage)
    if loss_type == "grpo":
        hand = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    else:
        hand = (per_token * mask).sum() / (4 * 8)
    trainer.current_gradient_accumulation_steps = 1  # train() sets it at each step
    with torch.no_grad():
        loss = trainer.compute_loss(model, micro)
    torch.testing.assert_close(loss, hand, rtol=1e-4, atol=1e-6)


# ---- the toy recipe, 2 processes through the real CLI ---------------------------------------------------


@pytest.mark.multiproc
def test_grpo_tiny_two_processes_reward_rises(tmp_path, warm):
    """recipes/grpo_tiny.yaml as shipped (its user reward file, 2 ranks): the steps consume the batch the plan
    computed, the mean reward of the last steps is clearly above the first ones', and the logs carry it."""
    out = tmp_path / "grpo"
    proc = run_launch([GRPO_TINY, f"output.dir={out}", f"distributed.master_port={free_port()}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["stage"]["completions_per_step"] == 32 and plan["stage"]["prompts_per_step"] == 2
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    steps = plan["recipe"]["train"]["max_steps"]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    # each step reads prompts_per_step prompts of the 48 (and samples 8 completions of each)
    state = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert state[-1]["epoch"] == pytest.approx(steps * 2 / 48, rel=1e-6)
    rewards = [r["reward"] for r in records]
    assert all("rewards/ascii_share/mean" in r and "completions/mean_length" in r for r in records)
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.05, rewards
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert samples and set(samples[0]["rewards"]) == {"ascii_share"}


@pytest.mark.multiproc
def test_a_qlora_grpo_run_trains_its_adapter_over_the_4bit_base(tmp_path, warm):
    """model.quantization: 4-bit (bitsandbytes on CPU) under GRPO: the rollouts sample from the quantized base
    with the adapter, the steps are logged with their reward, and the saved adapter has moved from its zero init."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "qlora"
    overrides = ["model.quantization={bits: 4}", "train.max_steps=2", "train.max_new_tokens=8"]
    proc = run_launch(
        [
            GRPO_TINY,
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            "distributed.nproc_per_node=1",
            *overrides,
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert json.loads((out / "plan.json").read_text())["recipe"]["model"]["quantization"]["bits"] == 4
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("reward" in r for r in records)
    lora_b = [value for key, value in load_file(out / "adapter_model.safetensors").items() if "lora_B" in key]
    assert lora_b and any(torch.count_nonzero(value) for value in lora_b)


@pytest.mark.multiproc
def test_grpo_rewarded_by_an_rm_run(rm_run, tmp_path):
    """train.rewards: [reward_model] with train.reward_model = a finished rm run's output.dir (1 process, 2 steps):
    the run finishes, and each step logs the reward model's scores, which differ between the completions."""
    out = tmp_path / "grpo_rm"
    proc = run_launch(
        [
            GRPO_TINY,
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            "distributed.nproc_per_node=1",
            "train.rewards=[reward_model]",
            f"train.reward_model={rm_run}",
            "train.max_steps=2",
            "train.max_new_tokens=8",
            "train.num_generations=4",
            "train.micro_batch_size=4",
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rewards/reward_model/mean"] == pytest.approx(r["reward"]) for r in records), records
    assert any(r["rewards/reward_model/std"] > 0 for r in records), records
    samples = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    scores = [sample["rewards"]["reward_model"] for sample in samples]
    assert len(set(scores)) > 1, scores
