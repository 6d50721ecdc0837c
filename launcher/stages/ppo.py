"""PPO (RLHF): a LoRA policy with a value head samples replies to the recipe's prompts, a reward
model (an `rm` run's output) scores them, and one clipped PPO update per rollout trains policy
and value together.

TRL 1.16 has no PPO trainer (it was removed upstream, huggingface/trl#7020), so the loop is ours,
on transformers' Trainer (DeepSpeed, checkpoints, logging), with TRL's helpers for the parts it
owns: unwrap_model_for_generation (gathers ZeRO-3 shards to generate), prepare_deepspeed (the
reward model under ZeRO-3), use_adapter and selective_log_softmax.

One model, three roles: the policy is the PEFT model, the value head reads its last hidden
states, and the reference is the same model with the adapter disabled (a new adapter) or with
a frozen copy of the starting adapter (model.adapter, e.g. the SFT stage's output).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import set_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig, Trainer, TrainingArguments
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler, selective_log_softmax, use_adapter

from launcher.checkpoint.paths import POLICY_PREFIX, VALUE_HEAD, VALUE_HEAD_PREFIX
from launcher.compat import TrainerHooks
from launcher.data.prompts import prompt_data, rollout_prompts, rollout_summary

if TYPE_CHECKING:
    from launcher.plan.types import Plan
    from launcher.recipe.types import Recipe

GAMMA, LAMBDA = 1.0, 0.95  # GAE discount and smoothing (a reply is one episode; its reward comes at the end)
REFERENCE = "ref"  # the frozen copy of a starting adapter


class PolicyWithValue(nn.Module):
    """The policy LM and a scalar value head on its last hidden states, as one module so that
    DeepSpeed trains (and ZeRO partitions) both. Other attributes resolve on the policy."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        dtype = next(p.dtype for p in policy.parameters() if p.is_floating_point())
        self.v_head = nn.Linear(hidden, 1, dtype=dtype)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("policy"), name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits, self.v_head(out.hidden_states[-1]).squeeze(-1)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (prompts are left-padded), as generate() uses."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class PromptCollator:
    """Left-pads prompts for generation. Its counters (read by the throughput logger) hold the
    prompts; each rollout's replies are added by the trainer once sampled (rollout_counts)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.tokens = self.trained_tokens = self.slots = self.attention_pairs = 0

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        longest = max(lengths)
        self.tokens += sum(lengths)
        self.slots += longest * len(examples)
        self.attention_pairs += sum(n * n for n in lengths)
        return {
            "input_ids": torch.tensor(
                [[self.pad_token_id] * (longest - len(e["input_ids"])) + e["input_ids"] for e in examples]
            ),
            "attention_mask": torch.tensor([[0] * (longest - n) + [1] * n for n in lengths]),
        }


def rollout_counts(prompt_mask: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """What a rollout adds to the collator's counts of its prompts: tokens, trained tokens, slots, attention pairs."""
    prompt, whole = prompt_mask.sum(1), mask.sum(1)
    replies = int((whole - prompt).sum())
    return [replies, replies, mask.numel() - prompt_mask.numel(), int((whole * whole - prompt * prompt).sum())]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def advantages_and_returns(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each reply's tokens (values past the reply's end count as 0); returns = advantages + values."""
    values = values * mask
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + GAMMA * following - values[:, t]
        running = (delta + GAMMA * LAMBDA * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def reply_mask(replies: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on each reply's tokens up to and including its first eos, 0 on the padding after it."""
    eos = (replies == eos_token_id).long()
    return ((eos.cumsum(1) - eos) == 0).long()


class PPOTrainer(TrainerHooks, Trainer):
    """One rollout per micro batch: generate, score, estimate advantages; then the clipped PPO loss.

    With ppo["epochs"] = K > 1 the sampler replays each global batch of prompts for K optimizer
    steps (TRL's RepeatSampler); the first computes the rollouts, the next K - 1 train on the stored
    ones, whose old log-probs stay fixed while the policy moves, so the ratio clip takes effect."""

    def __init__(
        self, *args, reward_model: nn.Module, generation: GenerationConfig, ppo: dict, reference: str | None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.generation = generation
        self.ppo = ppo
        self.reference = reference
        if self.is_deepspeed_enabled:  # ZeRO-3 shards it like the policy; otherwise a plain copy per rank
            self.reward_model = prepare_deepspeed(reward_model, self.accelerator)
        else:
            self.reward_model = reward_model.to(self.args.device).eval()
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._stored: dict[int, dict] = {}  # micro-step slot within the accumulation cycle -> its rollout
        self._micro_steps = 0

    def train_sampler(self, train_dataset=None):
        if self.ppo["epochs"] == 1:
            return super().train_sampler(train_dataset)
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return RepeatSampler(
            train_dataset or self.train_dataset,
            mini_repeat_count=1,
            batch_size=global_batch,
            repeat_count=self.ppo["epochs"],
            seed=args.seed,
        )

    def _rollout_for_step(self, model, inputs: dict) -> dict:
        """A fresh rollout on the first of every ppo["epochs"] steps (or after a resume), else the stored one."""
        slot = self._micro_steps % self.args.gradient_accumulation_steps
        self._micro_steps += 1
        stored = self._stored.get(slot)
        if self.state.global_step % self.ppo["epochs"] == 0 or stored is None:
            stored = self._stored[slot] = self._rollout(model, inputs["input_ids"], inputs["attention_mask"])
        elif not torch.equal(stored["prompts"], inputs["input_ids"]):
            raise RuntimeError("ppo: a replayed step got other prompts than its stored rollout (sampler out of step)")
        self._record(**stored["metrics"])
        return stored

    @torch.no_grad()
    def _rollout(self, model, prompts: torch.Tensor, prompt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        unwrapped = self.accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        with unwrap_model_for_generation(
            model, self.accelerator, gradient_checkpointing_kwargs=self.args.activation_checkpointing_kwargs
        ) as gen:
            sequences = gen.policy.generate(
                input_ids=prompts, attention_mask=prompt_mask, generation_config=self.generation
            )
        unwrapped.train(was_training)
        replies = sequences[:, prompts.shape[1] :]
        mask = torch.cat([prompt_mask, reply_mask(replies, self.generation.eos_token_id)], dim=1)
        sequences = torch.where(mask.bool(), sequences, self.generation.pad_token_id)
        logits, values = model(input_ids=sequences, attention_mask=mask)
        with use_adapter(unwrapped.policy, self.reference):
            ref_logits, _ = model(input_ids=sequences, attention_mask=mask)
        scores = (
            self.reward_model(input_ids=sequences, attention_mask=mask, position_ids=positions(mask))
            .logits[:, 0]
            .float()
        )
        start = prompts.shape[1] - 1  # logits at position t predict token t + 1
        rollout = {
            "sequences": sequences,
            "mask": mask,
            "reply_mask": mask[:, prompts.shape[1] :].float(),
            "logprobs": self._logprobs(logits, sequences, start),
            "values": values[:, start:-1].float(),
        }
        ref_logprobs = self._logprobs(ref_logits, sequences, start)
        kl = (rollout["logprobs"] - ref_logprobs) * rollout["reply_mask"]
        rewards = -self.ppo["kl_coef"] * kl
        last = rollout["reply_mask"].sum(1).long() - 1  # the reward model's score lands on each reply's last token
        rewards[torch.arange(len(last)), last] += scores
        advantages, rollout["returns"] = advantages_and_returns(rewards, rollout["values"], rollout["reply_mask"])
        rollout["advantages"] = whiten(advantages, rollout["reply_mask"])
        if hasattr(
            self.data_collator, "add"
        ):  # the worker's consumed-token counter (launcher.monitoring.throughput.ConsumedCounts)
            self.data_collator.add(rollout_counts(prompt_mask, mask))
        rollout["prompts"] = prompts
        rollout["metrics"] = {
            "score": scores.mean(),
            "kl": kl.sum(1).mean(),
            "non_score_reward": rewards.sum(1).mean() - scores.mean(),
            "response_length": rollout["reply_mask"].sum(1).mean(),
        }
        return rollout

    def _logprobs(self, logits: torch.Tensor, sequences: torch.Tensor, start: int) -> torch.Tensor:
        """Log-probabilities of the reply tokens under the sampling temperature."""
        return selective_log_softmax(
            logits[:, start:-1].float() / self.generation.temperature, sequences[:, start + 1 :]
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rollout = self._rollout_for_step(model, inputs)
        logits, values = model(input_ids=rollout["sequences"], attention_mask=rollout["mask"])
        start, mask, clip = inputs["input_ids"].shape[1] - 1, rollout["reply_mask"], self.ppo["clip"]
        ratio = torch.exp(self._logprobs(logits, rollout["sequences"], start) - rollout["logprobs"])
        advantages = rollout["advantages"]
        policy_loss = masked_mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)), mask)
        values = values[:, start:-1].float()
        clipped = rollout["values"] + (values - rollout["values"]).clamp(-clip, clip)
        value_loss = 0.5 * masked_mean(
            torch.max((values - rollout["returns"]) ** 2, (clipped - rollout["returns"]) ** 2), mask
        )
        self._record(
            policy_loss=policy_loss.detach(),
            value_loss=value_loss.detach(),
            clipfrac=masked_mean(((ratio - 1).abs() > clip).float(), mask),
        )
        loss = policy_loss + self.ppo["vf_coef"] * value_loss
        return (loss, logits) if return_outputs else loss

    def _record(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self._metrics[f"ppo/{name}"].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the PPO metrics since the last log, averaged over steps and ranks (every rank logs together)."""
        if self._metrics:
            names = sorted(self._metrics)
            local = torch.tensor(
                [sum(self._metrics[n]) / len(self._metrics[n]) for n in names], device=self.args.device
            )
            logs.update(zip(names, self.accelerator.reduce(local, reduction="mean").tolist()))
            self._metrics.clear()
        super().log(logs, start_time)

    def load_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume without DeepSpeed (which restores its own engine state): the adapter and value head save_files wrote."""
        if self.is_deepspeed_enabled:
            return super().load_checkpoint(resume_from_checkpoint, model)
        wrapper = self.accelerator.unwrap_model(model or self.model)
        set_peft_model_state_dict(wrapper.policy, load_file(Path(resume_from_checkpoint) / ADAPTER_WEIGHTS))
        wrapper.v_head.load_state_dict(load_file(Path(resume_from_checkpoint) / VALUE_HEAD))

    def save_files(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy as a PEFT adapter (loads with PeftModel.from_pretrained) and the value head beside it."""
        if not self.args.should_save:  # Trainer calls this on every rank; under ZeRO-3 the others hold only shards
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        state_dict = model.state_dict() if state_dict is None else state_dict
        policy = {k.removeprefix(POLICY_PREFIX): v for k, v in state_dict.items() if k.startswith(POLICY_PREFIX)}
        model.policy.save_pretrained(folder, state_dict=policy, selected_adapters=["default"])
        value = {
            k.removeprefix(VALUE_HEAD_PREFIX): v.contiguous()
            for k, v in state_dict.items()
            if k.startswith(VALUE_HEAD_PREFIX)
        }
        save_file(value, folder / VALUE_HEAD)
        torch.save(self.args, folder / "training_args.bin")


def load_reward_model(reward_dir: str, base_dir: str, recipe: Recipe, dtype: torch.dtype, args: TrainingArguments):
    """The `rm` run's model: its base with the adapter (+ score head) merged, or its full model dir.

    Loaded whole on each rank, outside ZeRO-3's load-time partitioning (an adapter cannot be merged into
    partitioned weights); the trainer then hands it to DeepSpeed, which partitions it under ZeRO-3."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    common = {"dtype": dtype, "num_labels": 1, "trust_remote_code": recipe["model"]["trust_remote_code"]}
    unset_hf_deepspeed_config()
    try:
        if (Path(reward_dir) / "adapter_config.json").is_file():
            model = AutoModelForSequenceClassification.from_pretrained(base_dir, **common)
            model = PeftModel.from_pretrained(model, reward_dir).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(reward_dir, **common)
    finally:
        if getattr(args, "hf_deepspeed_config", None) is not None:
            set_hf_deepspeed_config(args.hf_deepspeed_config)
    return model.requires_grad_(False).eval()


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[PPOTrainer, dict]:
    """The PPO trainer over the recipe's prompts, rewarded by train.reward_model, and a summary of its data."""
    from launcher.model.builtin import local_model_path

    recipe = plan["recipe"]
    train = recipe["train"]
    prompts, rows = rollout_prompts(recipe, tokenizer, prompt_data)
    reference = None
    if recipe["model"]["adapter"] is not None:  # the starting adapter is the reference policy: keep a frozen copy
        model.load_adapter(recipe["model"]["adapter"], adapter_name=REFERENCE, is_trainable=False)
        model.set_adapter("default")
        reference = REFERENCE
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    reward_dir = train["reward_model"]
    assert reward_dir is not None, "ppo_spec.check requires train.reward_model"
    reward_model = load_reward_model(reward_dir, local_model_path(recipe["model"]["path"]), recipe, dtype, args)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    generation = GenerationConfig(
        max_new_tokens=train["max_new_tokens"],
        do_sample=True,
        temperature=train["temperature"],
        top_k=train["top_k"],
        top_p=train["top_p"],
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    trainer = PPOTrainer(
        model=PolicyWithValue(model),
        args=args,
        train_dataset=rows,
        data_collator=PromptCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        reward_model=reward_model,
        generation=generation,
        ppo={
            "kl_coef": train["kl_coef"],
            "clip": train["ppo_clip"],
            "vf_coef": train["vf_coef"],
            "epochs": train["ppo_epochs"],
        },
        reference=reference,
    )
    return trainer, rollout_summary(prompts, rows)
