"""`launch expand`: LLaMA Pro's block expansion. A new model folder whose decoder has N more layers: after every
layers / N original layers, a copy of the last of them whose output projections (self_attn.o_proj,
mlp.down_proj) are zero, so each new block adds nothing to the residual stream and the expanded model computes
exactly what the original did. A freeze recipe with method.llama_pro then trains only those blocks (as
LLaMA-Factory's scripts/llama_pro.py + use_llama_pro). Streaming, like merge: one tensor in memory at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from launcher.checkpoint.merge import base_folder, base_layout, full_precision_config, read_tensor, write_model_folder
from launcher.errors import MergeError
from launcher.model.hub import model_folder
from launcher.model.module_names import layer_list
from launcher.util.output_file import check_output_folder

OUTPUT_PROJECTIONS = (".o_proj.", ".down_proj.")  # zero in a new block: its attention and MLP add nothing


def new_layer_order(layers: int, blocks: int) -> list[tuple[int, bool]]:
    """(source layer, is a new identity block) for each layer of the expanded model, in order."""
    every = layers // blocks
    order = []
    for i in range(layers):
        order.append((i, False))
        if (i + 1) % every == 0:
            order.append((i, True))
    return order


def _checked_layers(config: dict, blocks: int, base: str) -> int:
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int):
        raise MergeError(
            f"base {base}: config.json has no num_hidden_layers (a multimodal or unknown layout). "
            "Fix: expand a causal language model of the Llama family (Llama, Mistral, Qwen2, ...)"
        )
    if blocks < 1 or layers % blocks:
        raise MergeError(
            f"--blocks {blocks}: base {base} has {layers} decoder layers, which {blocks} new blocks cannot "
            "interleave evenly (one after every layers / N). Fix: --blocks N with N dividing "
            f"{layers} (e.g. {', '.join(str(n) for n in range(1, layers + 1) if layers % n == 0)})"
        )
    return layers


def expand(base: str, out: str | Path, blocks: int, shard_size: str = "5GB") -> str:
    """base -> `out` with `blocks` identity blocks interleaved; returns the freeze keys that train them."""
    from launcher.model.builtin import local_model_path

    check_output_folder("--out", out, [("--base", model_folder(str(base)))])
    base_dir = base_folder(local_model_path(base))
    config = full_precision_config(base_dir, base, "zeroing their output projections would not make them zero")
    layers = _checked_layers(config, blocks, base)
    layout = base_layout(base_dir)
    prefix = layer_list(list(layout), layers)
    if prefix is None:
        raise MergeError(f"base {base}: no list of {layers} numbered decoder layers among its tensors. Fix: {FIX}")
    for i in range(layers):
        inside = [name for name in layout if name.startswith(f"{prefix}.{i}.")]
        if not all(any(p in name for name in inside) for p in OUTPUT_PROJECTIONS):
            raise MergeError(
                f"base {base}: layer {i} has no self_attn.o_proj and mlp.down_proj, the projections a new block "
                f"zeroes to start as the identity. Fix: {FIX}"
            )
    entries = [
        (name, shape, stored, lambda p=path, n=name: read_tensor(p, n))
        for name, (path, stored, shape) in layout.items()
        if not name.startswith(prefix + ".")
    ]
    for new, (source, identity) in enumerate(new_layer_order(layers, blocks)):
        for name, (path, stored, shape) in layout.items():
            if name.startswith(f"{prefix}.{source}."):
                zero = identity and any(p in name for p in OUTPUT_PROJECTIONS)
                entries.append(
                    (
                        f"{prefix}.{new}." + name.removeprefix(f"{prefix}.{source}."),
                        shape,
                        stored,
                        (lambda s=shape, d=stored: torch.zeros(s, dtype=d))
                        if zero
                        else (lambda p=path, n=name: read_tensor(p, n)),
                    )
                )
    config["num_hidden_layers"] = layers + blocks
    for key, value in config.items():  # per-layer settings (layer_types): the new block takes its source's
        if isinstance(value, list) and len(value) == layers:
            config[key] = [value[source] for source, _ in new_layer_order(layers, blocks)]
    write_model_folder(out, entries, config, base_dir, base_dir, shard_size)
    return (
        f"model.path: {out}, method: {{name: freeze, trainable_layers: {blocks}, llama_pro: true}} "
        "trains only the new blocks"
    )


FIX = "expand a causal language model of the Llama family (Llama, Mistral, Qwen2, ...)"
