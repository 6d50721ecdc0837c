"""A decoder-only model's shape and parameter tensors, from its config.json or a table of common hub
models, without loading it (torch-free): what the memory planner and the module-name checks read."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.model.builtin import builtin_config_path, is_builtin


@dataclass(frozen=True)
class Shape:
    """What the planner needs of a decoder-only transformer."""

    family: str  # "llama" (Llama, Qwen2, Mistral naming) or "chatglm"
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # output head shares the input embedding
    qkv_bias: bool
    head_dim: int = 0  # 0: hidden // heads

    @property
    def kv_dim(self) -> int:
        return (self.head_dim or self.hidden // self.heads) * self.kv_heads

    @property
    def q_dim(self) -> int:
        return (self.head_dim or self.hidden // self.heads) * self.heads


# Shapes of common hub models (from their config.json), so `launch plan` answers offline.
KNOWN_SHAPES = {
    "Qwen/Qwen2-0.5B": Shape("llama", 24, 896, 4864, 14, 2, 151936, True, True),
    "Qwen/Qwen2-1.5B": Shape("llama", 28, 1536, 8960, 12, 2, 151936, True, True),
    "Qwen/Qwen2-7B": Shape("llama", 28, 3584, 18944, 28, 4, 152064, False, True),
    "Qwen/Qwen2-72B": Shape("llama", 80, 8192, 29568, 64, 8, 152064, False, True),
    "meta-llama/Meta-Llama-3-8B": Shape("llama", 32, 4096, 14336, 32, 8, 128256, False, False),
    "meta-llama/Meta-Llama-3-70B": Shape("llama", 80, 8192, 28672, 64, 8, 128256, False, False),
    "THUDM/chatglm3-6b": Shape("chatglm", 28, 4096, 13696, 32, 2, 65024, False, True),
}


def shape_from_config(config: dict) -> Shape | None:
    """The Shape of a config.json, or None for a layout the planner does not know."""
    if config.get("model_type") == "chatglm":
        return Shape(
            "chatglm",
            config["num_layers"],
            config["hidden_size"],
            config["ffn_hidden_size"],
            config["num_attention_heads"],
            config.get("multi_query_group_num", config["num_attention_heads"]),
            config["padded_vocab_size"],
            False,
            config.get("add_qkv_bias", False),
            config.get("kv_channels", 0),
        )
    needed = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    if not all(isinstance(config.get(k), int) for k in needed):
        return None
    return Shape(
        "llama",
        config["num_hidden_layers"],
        config["hidden_size"],
        config["intermediate_size"],
        config["num_attention_heads"],
        config.get("num_key_value_heads") or config["num_attention_heads"],
        config["vocab_size"],
        bool(config.get("tie_word_embeddings", False)),
        config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
        config.get("head_dim") or 0,
    )


def config_file(model_path: str) -> Path | None:
    """The builtin or local model's config.json, or None (a hub id: not read here)."""
    path = builtin_config_path(model_path) if is_builtin(model_path) else Path(model_path) / "config.json"
    return path if path.is_file() else None


def model_shape(model_path: str) -> tuple[Shape | None, str]:
    """(shape, where it came from): builtin or local config.json first, then the table."""
    path = config_file(model_path)
    if path is not None:
        return shape_from_config(json.loads(path.read_text())), str(path)
    for name, shape in KNOWN_SHAPES.items():
        if model_path.startswith(name):
            return shape, f"table: {name}"
    return None, "unknown (no local config.json, not in the table of known models)"


@dataclass(frozen=True)
class Tensor:
    name: str  # dotted parameter name, as the model names it
    rows: int
    cols: int = 1
    linear: bool = False  # a decoder-layer linear weight: LoRA target, quantized by bitsandbytes

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def _llama_layer(shape: Shape, p: str) -> list[Tensor]:
    h, inter, q, kv = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim
    out = [Tensor(p + "input_layernorm.weight", h), Tensor(p + "post_attention_layernorm.weight", h)]
    for name, rows, cols in (
        ("self_attn.q_proj", q, h),
        ("self_attn.k_proj", kv, h),
        ("self_attn.v_proj", kv, h),
        ("self_attn.o_proj", h, q),
        ("mlp.gate_proj", inter, h),
        ("mlp.up_proj", inter, h),
        ("mlp.down_proj", h, inter),
    ):
        out.append(Tensor(p + name + ".weight", rows, cols, True))
        if shape.qkv_bias and name[-6:] in ("q_proj", "k_proj", "v_proj"):
            out.append(Tensor(p + name + ".bias", rows))
    return out


def _llama_outer(shape: Shape) -> list[Tensor]:
    h, v = shape.hidden, shape.vocab
    head = [] if shape.tied else [Tensor("lm_head.weight", v, h)]
    return [Tensor("model.embed_tokens.weight", v, h), Tensor("model.norm.weight", h), *head]


def _chatglm_layer(shape: Shape, p: str) -> list[Tensor]:
    h, inter, q, kv = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim
    bias = [Tensor(p + "self_attention.query_key_value.bias", q + 2 * kv)] if shape.qkv_bias else []
    return [
        Tensor(p + "input_layernorm.weight", h),
        Tensor(p + "self_attention.query_key_value.weight", q + 2 * kv, h, True),
        Tensor(p + "self_attention.dense.weight", h, q, True),
        Tensor(p + "post_attention_layernorm.weight", h),
        Tensor(p + "mlp.dense_h_to_4h.weight", 2 * inter, h, True),
        Tensor(p + "mlp.dense_4h_to_h.weight", h, inter, True),
        *bias,
    ]


def _chatglm_outer(shape: Shape) -> list[Tensor]:
    h, v = shape.hidden, shape.vocab
    return [
        Tensor("transformer.embedding.word_embeddings.weight", v, h),
        Tensor("transformer.encoder.final_layernorm.weight", h),
        Tensor("transformer.output_layer.weight", v, h),  # never tied
    ]


@dataclass(frozen=True)
class Layout:
    """How a family names its parameters: the decoder-layer list, one layer's tensors, the rest."""

    layer_list: str  # dotted name of the decoder-layer list
    layer: Callable[[Shape, str], list[Tensor]]  # (shape, "<layer_list>.<i>.") -> that layer's tensors
    outer: Callable[[Shape], list[Tensor]]  # embeddings, final norm, output head (tied head counted once)


LAYOUTS = {  # Shape.family -> its parameter layout
    "llama": Layout("model.layers", _llama_layer, _llama_outer),
    "chatglm": Layout("transformer.encoder.layers", _chatglm_layer, _chatglm_outer),
}


def layer_list_name(shape: Shape) -> str:
    """The dotted name of the decoder-layer list its parameter names start with."""
    return LAYOUTS[shape.family].layer_list


def base_tensors(shape: Shape) -> list[Tensor]:
    """Every parameter tensor of the base model (tied output head counted once)."""
    layout = LAYOUTS[shape.family]
    layers = [t for i in range(shape.layers) for t in layout.layer(shape, f"{layout.layer_list}.{i}.")]
    return layers + layout.outer(shape)
