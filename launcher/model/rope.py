"""RoPE scaling set on a model's config as it loads (model.rope_scaling, the plan's context.rope_scaling): what the
worker trains under and what chat, serve, eval and merge load an adapter's base with. transformers is imported
only when a config is built."""

from __future__ import annotations

# Llama 3.1's frequency bands, which transformers' llama3 rope type requires and LLaMA-Factory sets too
LLAMA3_BANDS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}


def rope_scaled_config(model_dir: str, rope: dict, trust_remote_code: bool):
    """The model's config with the plan's RoPE scaling in transformers' rope_parameters (its rope_theta kept).
    Linear, yarn and llama3 scale to factor x original positions; dynamic rescales itself beyond the original, so
    max_position_embeddings stays the original there (transformers reads it as dynamic's starting length)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    original = rope["original_max_position_embeddings"]
    config.rope_parameters = {
        **config.rope_parameters,
        **rope,
        **(LLAMA3_BANDS if rope["rope_type"] == "llama3" else {}),
    }
    config.max_position_embeddings = original if rope["rope_type"] == "dynamic" else int(rope["factor"] * original)
    return config
