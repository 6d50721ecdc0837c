"""Stage ppo (RLHF): a LoRA policy samples replies to prompts, scored by an rm run's model."""

from launcher.data.kinds import PROMPT_KINDS
from launcher.keys import Key
from launcher.registry import Refuse, StageSpec


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """Combinations that cannot work (docs/stages.md)."""
    method, dist, data = r["method"]["name"], r["distributed"], r["data"]
    if method != "lora":
        refuse(
            "method.name",
            f"stage: ppo needs method.name: lora, got {method} (policy, value head and reference share "
            "one model: the reference is the policy with its adapter disabled, so no second full copy "
            "is held). Fix: set method.name: lora",
        )
    if r["method"].get("variant") == "pissa":
        refuse(
            "method.variant",
            "method.variant: pissa cannot run with stage: ppo (the KL reference is the policy with "
            "its adapter disabled, which under PiSSA is the residual base, not the model). "
            "Fix: set method.variant: lora",
        )
    if r["train"]["reward_model"] is None:
        refuse(
            "train.reward_model",
            "stage: ppo needs train.reward_model, the output.dir of a stage: rm run. "
            "Fix: train one (e.g. recipes/rm_tiny.yaml) and set train.reward_model to its output.dir",
        )
    if dist["offload"] == "all":
        refuse(
            "distributed.offload",
            "distributed.offload: all cannot run with stage: ppo (every rollout gathers the whole "
            "policy onto each device to generate, which undoes parameter offload). "
            "Fix: set distributed.offload: optimizer or none",
        )
    if data["eval_datasets"] or data["val_size"] > 0:
        refuse(
            "data.eval_datasets" if data["eval_datasets"] else "data.val_size",
            "stage: ppo has no evaluation pass (its progress is the reward model's score, logged as ppo/score). "
            "Fix: remove data.eval_datasets and data.val_size",
        )


KEYS = {  # train.*
    "reward_model": Key(
        "str",
        None,
        "PPO rewards: the output.dir of a stage: rm run on the same model.path",
        nullable=True,
    ),
    "max_new_tokens": Key("int", 128, "PPO generation: longest sampled reply", low=1),
    "temperature": Key("float", 1.0, "PPO generation: sampling temperature", low=0, low_inclusive=False),
    "top_k": Key("int", 0, "PPO generation: sample among the k likeliest tokens (0 = all)", low=0),
    "top_p": Key("float", 1.0, "PPO generation: nucleus sampling mass", low=0, high=1, low_inclusive=False),
    "kl_coef": Key("float", 0.05, "PPO: per-token KL penalty against the reference policy", low=0),
    "ppo_clip": Key(
        "float",
        0.2,
        "PPO: clip range of the policy ratio and of the value update",
        low=0,
        low_inclusive=False,
    ),
    "vf_coef": Key("float", 0.1, "PPO: weight of the value loss", low=0),
    "ppo_epochs": Key(
        "int",
        1,
        "PPO: optimizer steps trained on each rollout (the prompts' batch is replayed)",
        low=1,
    ),
}


SPEC = StageSpec(
    kinds=PROMPT_KINDS, data="prompts", trainer="launcher.stages.ppo:build_trainer", check=check, keys=KEYS
)
