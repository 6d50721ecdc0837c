"""Fine-tuning methods end to end through the real `launch` CLI (2 processes, DeepSpeed on
gloo): each run trains on the same 8 examples every step (one full batch), so its loss must
fall; DeepSpeed's own checkpoint (zero_to_fp32) is the oracle of what trained; the saved
artefact must reload and reproduce the model those weights make, and every other parameter
must be bit-identical to the base."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from launcher.recipe.load import RecipeError, load_recipe
from launcher.registry import engine_spec
from tests.conftest import ROOT, ZERO_OPTIONS
from tests.worker.test_e2e import TINY, _losses, _train

STEPS = 4
# one full batch per step: 8 examples = micro 4 x 2 ranks x grad_accum 1; constant data makes the loss comparable
FAST = [
    "data.max_samples=8",
    "train.grad_accum=1",
    "train.warmup_ratio=0",
    f"train.max_steps={STEPS}",
    f"train.save_steps={STEPS}",
    "train.logging_steps=1",
]
DOC = ROOT / "docs" / "methods.md"
IDS = torch.tensor([[5, 17, 300, 42, 1000, 7, 99, 2047]])


def _run(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Path, str]:
    out, proc = _train(tmp_path, name, [*FAST, *overrides])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = _losses(out)
    assert len(losses) == STEPS and losses[-1] < losses[0], f"loss did not go down: {losses}"
    return out, proc.stdout


def _recipe(out: Path) -> dict:
    return json.loads((out / "plan.json").read_text())["recipe"]


def _base(quantization: dict | None = None):
    """A fresh base model (fp32), k-bit quantized like the worker does when asked."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from launcher.model.builtin import materialize

    extra = {}
    if quantization is not None:
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization["bits"] == 4,
            load_in_8bit=quantization["bits"] == 8,
            bnb_4bit_quant_type=quantization["type"],
            bnb_4bit_use_double_quant=quantization["double_quant"],
            bnb_4bit_compute_dtype=torch.float32,
        )
    return AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32, **extra)


def _trained_weights(out: Path) -> dict[str, torch.Tensor]:
    """The trainable parameters of the final checkpoint, consolidated by DeepSpeed's zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(out / f"checkpoint-{STEPS}"), exclude_frozen_parameters=True)


def _logits(model) -> torch.Tensor:
    # train mode for k-bit models (no dropout anywhere here): in eval mode bitsandbytes' CPU path
    # repacks 4-bit weights and fails when in_features (352 here) is not a multiple of its block size 64
    model.train(getattr(model, "is_quantized", False))
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def _check_model_dir(out: Path, trains: str) -> None:
    """full/freeze: the saved model dir loads with AutoModelForCausalLM, exactly the parameters
    matching `trains` differ from the base, and it equals base + DeepSpeed's trained weights."""
    from transformers import AutoModelForCausalLM

    base = dict(_base().named_parameters())
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    expected = {name for name in base if re.search(trains, name)}
    changed = {name for name, p in saved.named_parameters() if not torch.equal(p, base[name])}
    assert changed == expected, (
        f"changed but not meant to: {sorted(changed - expected)}; meant to but unchanged: {sorted(expected - changed)}"
    )
    weights = _trained_weights(out)
    assert set(weights) == expected, "DeepSpeed trained other parameters than the method selected"
    rebuilt = _base()
    rebuilt.load_state_dict(weights, strict=False)
    torch.testing.assert_close(_logits(saved), _logits(rebuilt), rtol=0, atol=0)


def _check_adapter(out: Path, trains: str, atol: float = 1e-6) -> None:
    """PEFT methods: DeepSpeed trained exactly the adapter parameters matching `trains` (the base,
    frozen, is not in the checkpoint); the saved adapter reloads with PeftModel.from_pretrained onto
    a fresh base (quantized like the run's) and gives the logits of the run's own method applied to
    the base with the checkpoint's weights, which differ from the base's."""
    from peft import PeftModel

    from launcher.methods import apply_method

    recipe = _recipe(out)
    quant = recipe["model"]["quantization"]
    weights = _trained_weights(out)
    assert weights and all(re.search(trains, name) for name in weights), sorted(weights)
    rebuilt = apply_method(_base(quant), recipe)
    assert {n for n, p in rebuilt.named_parameters() if p.requires_grad} == set(weights)
    unexpected = rebuilt.load_state_dict(weights, strict=False).unexpected_keys
    assert not unexpected, unexpected
    base_logits = _logits(_base(quant))
    reloaded = PeftModel.from_pretrained(_base(quant), str(out))
    torch.testing.assert_close(_logits(reloaded), _logits(rebuilt), rtol=0, atol=atol)
    assert not torch.allclose(_logits(reloaded), base_logits), "adapter loaded but changes nothing"


FULL_RUN = (3, "all")


@pytest.mark.multiproc
def test_full_under_zero3_with_offload_saves_a_loadable_model(tmp_path, warm):
    out, stdout = _run(
        tmp_path,
        "full",
        ["method={name: full}", f"distributed.zero={FULL_RUN[0]}", f"distributed.offload={FULL_RUN[1]}"],
    )
    assert "trainable params: 1,263,744 / 1,263,744 (100.0000%)" in stdout
    _check_model_dir(out, trains=r".")
    # resume's pickle check (launcher/checkpoint/pickle_check.py) passes the offloaded checkpoint
    from launcher.checkpoint.pickle_check import foreign_class, resume_pickles

    pickles = resume_pickles(out / f"checkpoint-{STEPS}")
    assert len(pickles) >= 4 and all(foreign_class(path) is None for path in pickles), pickles


FREEZE_CASES = [
    (
        2,
        "{name: freeze, trainable_layers: -1, trainable_modules: [mlp], extra_modules: [embed_tokens]}",
        r"^model\.(layers\.0\.mlp\.|embed_tokens\.)",
    ),
    (
        3,
        "{name: freeze, trainable_layers: 2, extra_modules: [norm, lm_head]}",
        r"^(model\.layers\.[23]\.|model\.norm\.|lm_head\.)",
    ),
]


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "zero,method,trains", FREEZE_CASES, ids=["zero2-first-layer-mlp+embed", "zero3-last-2-layers+norm+head"]
)
def test_freeze_trains_exactly_the_selected_parameters(zero, method, trains, tmp_path, warm):
    out, stdout = _run(tmp_path, f"freeze{zero}", [f"method={method}", f"distributed.zero={zero}"])
    assert "[launcher] freeze: trainable parameters:" in stdout  # the report of exactly what trains
    _check_model_dir(out, trains)


@pytest.mark.multiproc
def test_freeze_more_layers_than_the_model_has_is_refused_before_training(tmp_path, warm):
    out, proc = _train(tmp_path, "freeze9", [*FAST, "method={name: freeze, trainable_layers: 9}"])
    assert proc.returncode == 2  # refused by the planner from the model's config: no rank started
    assert (
        "method.trainable_layers = 9, but builtin:tiny-qwen2 has 4 decoder layers. "
        "Fix: set method.trainable_layers between -4 and 4"
    ) in proc.stderr
    assert not (out / "logs").exists() and not (out / "trainer_state.json").exists()


LORA_CASES = [
    (
        3,
        ["method.variant=dora", "method.loraplus_ratio=4", "method.additional_target=[embed_tokens]"],
        r"\.(lora_[AB]\.default|lora_magnitude_vector\.default|embed_tokens\.modules_to_save\.default)\.weight$",
    ),
    (2, ["method.variant=rslora", "method.target=[q_proj,v_proj]"], r"\.(q_proj|v_proj)\.lora_[AB]\.default\.weight$"),
]


@pytest.mark.multiproc
@pytest.mark.parametrize("zero,overrides,trains", LORA_CASES, ids=["zero3-dora+loraplus+embed", "zero2-rslora-qv"])
def test_lora_variants(zero, overrides, trains, tmp_path, warm):
    out, _ = _run(tmp_path, f"lora{zero}", [*overrides, f"distributed.zero={zero}"])
    _check_adapter(out, trains)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] == ("method.variant=dora" in overrides)
    assert config["use_rslora"] == ("method.variant=rslora" in overrides)
    if "method.loraplus_ratio=4" in overrides:  # DeepSpeed stepped the B matrices at 4 x lr
        state = torch.load(
            out / f"checkpoint-{STEPS}" / f"global_step{STEPS}" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            map_location="cpu",
            weights_only=False,
        )
        groups = state["optimizer_state_dict"]["optimizer_state_dict"]["param_groups"]
        lr = _recipe(out)["train"]["lr"]
        assert sorted({g["initial_lr"] for g in groups if g["params"]}) == pytest.approx([lr, 4 * lr])


PISSA_ZERO = 2


@pytest.mark.multiproc
def test_pissa_adapter_is_saved_as_plain_lora_over_the_original_base(tmp_path, warm):
    """PiSSA trains over a residual base; the saved adapter, converted at the end, must give the
    trained model (residual base + trained PiSSA weights from DeepSpeed's checkpoint) when loaded
    over the untouched original base. Tolerance: W_res + BA and W + B'A' round differently in fp32."""
    out, _ = _run(tmp_path, "pissa", ["method.variant=pissa", f"distributed.zero={PISSA_ZERO}"])
    _check_adapter(
        out, trains=r"\.lora_[AB]\.default\.weight$", atol=2e-5
    )  # 1e-5: one logit in 16k was 1.04e-5 off on another CPU
    config = json.loads((out / "adapter_config.json").read_text())
    recipe = _recipe(out)
    assert (config["r"], config["lora_alpha"]) == (2 * recipe["method"]["rank"], 2 * recipe["method"]["alpha"])
    assert config["init_lora_weights"] is True


@pytest.mark.unit
def test_loraplus_optimizer_puts_b_matrices_at_ratio_times_lr(tmp_path):
    """The optimizer Trainer.create_optimizer builds (DeepSpeed's path calls it too)."""
    from transformers import Trainer, TrainingArguments

    from launcher.methods.lora import apply, loraplus_optimizer
    from launcher.recipe.load import load_recipe

    recipe = load_recipe(ROOT / TINY, ["method.loraplus_ratio=16"])
    model = apply(_base(), recipe["method"], recipe)
    trainer = Trainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, use_cpu=True, report_to=[])
    )
    trainer.optimizer_cls_and_kwargs = loraplus_optimizer(trainer, 16)
    lr_of = {id(p): g["lr"] for g in trainer.create_optimizer().param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert lr_of[id(param)] == pytest.approx(1.6e-2 if "lora_B" in name else 1e-3), name


def _one_step(model, lr: float = 0.05) -> None:
    """One AdamW step of the causal-LM loss on IDS over the parameters that require grad."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    model(input_ids=IDS, attention_mask=torch.ones_like(IDS), labels=IDS).loss.backward()
    optimizer.step()


@pytest.mark.unit
def test_oft_trains_only_its_rotations_saves_a_peft_adapter_and_merges_as_peft_does(tmp_path):
    """The method as the worker builds it: PEFT's OFT layers on every decoder linear layer, only their rotations
    trainable, identity at init; one step changes the output; the saved adapter reloads
    with PEFT to the trained model, and `launch merge` gives PEFT's merge_and_unload."""
    from peft import PeftModel
    from peft.tuners.oft.layer import OFTLayer
    from transformers import AutoModelForCausalLM

    from launcher.checkpoint.merge import merge
    from launcher.methods import apply_method

    recipe = load_recipe(ROOT / TINY, ["method={name: oft, block_size: 16, coft: true, eps: 0.5}"])
    model, base_logits = apply_method(_base(), recipe), _logits(_base())
    oft_layers = {name for name, module in model.named_modules() if isinstance(module, OFTLayer)}
    assert len(oft_layers) == 4 * 7  # q, k, v, o, gate, up, down of each of the 4 layers
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{layer}.oft_R.default.weight" for layer in oft_layers}
    torch.testing.assert_close(_logits(model), base_logits, rtol=0, atol=0)  # each rotation starts as I

    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    _one_step(model)
    trained_logits = _logits(model)
    assert not torch.allclose(trained_logits, base_logits, atol=1e-4), "one step changed nothing"
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_base(), str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(reloaded), trained_logits, rtol=0, atol=1e-5)  # COFT re-projects: fp32
    assert merge("builtin:tiny-qwen2", tmp_path / "adapter", tmp_path / "merged") == []
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).state_dict()
    reference = reloaded.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.unit
def test_qoft_trains_over_a_4bit_base_and_reloads_over_it(tmp_path):
    """LF's QOFT: OFT over a bitsandbytes nf4 base, as the worker builds it; the adapter reloads over the same
    quantized base to the trained model's logits."""
    from peft import PeftModel

    from launcher.methods import apply_method

    recipe = load_recipe(ROOT / TINY, ["method={name: oft, block_size: 16}", "model.quantization={bits: 4}"])
    quant = recipe["model"]["quantization"]
    model = apply_method(_base(quant), recipe)
    assert all(".oft_R." in name for name, p in model.named_parameters() if p.requires_grad)
    base_logits = _logits(model)  # each rotation starts as the identity
    _one_step(model)
    trained_logits = _logits(model)
    assert not torch.allclose(trained_logits, base_logits, atol=1e-4), "one step changed nothing"
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_base(quant), str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(reloaded), trained_logits, rtol=0, atol=1e-5)


@pytest.mark.unit
def test_llama_pro_expansion_is_the_identity_and_freeze_trains_only_the_new_blocks(tmp_path, capsys):
    """`launch expand` (LLaMA-Factory's scripts/llama_pro.py): 4 layers + 2 blocks, each a copy of layer 1 or 3 with
    zero o_proj and down_proj, so the expanded model (a plain transformers folder) gives the original's logits;
    freeze with llama_pro trains exactly the new blocks (LF's rule: the last of every 3 layers) and nothing else."""
    from transformers import AutoModelForCausalLM

    from launcher import cli
    from launcher.methods import apply_method
    from launcher.model.module_names import freeze_error

    expand = ["expand", "--base", "builtin:tiny-qwen2", "--out"]
    assert cli.main([*expand, str(tmp_path / "odd"), "--blocks", "3"]) == 2
    assert re.search(r"--blocks 3: .* has 4 decoder layers.*Fix: --blocks N", capsys.readouterr().err)
    assert cli.main([*expand, str(tmp_path / "pro"), "--blocks", "2"]) == 0
    assert "llama_pro: true" in capsys.readouterr().out and not (tmp_path / "odd").exists()
    expanded, base = AutoModelForCausalLM.from_pretrained(tmp_path / "pro", dtype=torch.float32), _base()
    assert expanded.config.num_hidden_layers == 6
    torch.testing.assert_close(_logits(expanded), _logits(base), rtol=0, atol=0)
    weights, original = expanded.state_dict(), base.state_dict()
    for new, source in ((2, 1), (5, 3)):
        for name, tensor in original.items():
            if name.startswith(f"model.layers.{source}."):
                copy = weights[name.replace(f".{source}.", f".{new}.", 1)]
                zero = ".o_proj." in name or ".down_proj." in name
                assert torch.equal(copy, torch.zeros_like(tensor) if zero else tensor), name

    method = {"name": "freeze", "trainable_layers": 2, "llama_pro": True}
    recipe = load_recipe(ROOT / TINY, [f"model.path={tmp_path / 'pro'}", "method=" + json.dumps(method)])
    model = apply_method(expanded, recipe)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name in weights if name.startswith(("model.layers.2.", "model.layers.5."))}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    _one_step(model)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)
    assert not torch.allclose(_logits(model), _logits(base), atol=1e-4), "one step changed nothing"
    assert "cannot split evenly" in freeze_error(
        {**recipe["method"], "trainable_layers": 4}, "model.layers", 6, [], "m"
    )


@pytest.mark.unit
def test_linear_probing_is_freeze_of_no_layer_with_the_output_head():
    """docs/methods.md's linear probing keys (LF's freeze_trainable_layers: 0 + freeze_extra_modules: lm_head)."""
    from launcher.methods import apply_method

    recipe = load_recipe(ROOT / TINY, ["method={name: freeze, trainable_layers: 0, extra_modules: [lm_head]}"])
    model = apply_method(_base(), recipe)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"lm_head.weight"}


QLORA_CASES = [(3, "{bits: 4, type: nf4, double_quant: true}"), (2, "{bits: 8}")]


@pytest.mark.multiproc
@pytest.mark.parametrize("zero,quantization", QLORA_CASES, ids=["zero3-nf4", "zero2-int8"])
def test_qlora_trains_and_reloads_over_the_quantized_base(zero, quantization, tmp_path, warm):
    out, _ = _run(tmp_path, f"qlora{zero}", [f"model.quantization={quantization}", f"distributed.zero={zero}"])
    _check_adapter(out, trains=r"\.lora_[AB]\.default\.weight$")


PREFIX_ZERO = 2


@pytest.mark.multiproc
def test_prefix_tuning_saves_and_reloads_as_an_adapter(tmp_path, warm):
    out, _ = _run(
        tmp_path,
        "prefix",
        [
            "method={name: prefix, num_virtual_tokens: 4, prefix_projection: true}",
            "train.gradient_checkpointing=false",
            f"distributed.zero={PREFIX_ZERO}",
        ],
    )
    _check_adapter(out, trains=r"^prompt_encoder\.default\.")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"


# docs/methods.md's table: every method x ZeRO stage x offload cell is "tested" (a run above covers
# it), "refused" (recipe validation says why) or "valid, not run"; generated, never edited by hand.
ROWS = {
    "full": ["method={name: full}"],
    "freeze": ["method={name: freeze}"],
    "lora (dora, rslora)": [],
    "lora + loraplus_ratio": ["method.loraplus_ratio=4"],
    "lora pissa": ["method.variant=pissa"],
    "qlora 4-bit": ["model.quantization={bits: 4}"],
    "qlora 8-bit": ["model.quantization={bits: 8}"],
    "prefix": ["method={name: prefix}", "train.gradient_checkpointing=false"],
    "oft": ["method={name: oft}"],
    "qoft 4-bit": ["method={name: oft}", "model.quantization={bits: 4}"],
}
COLUMNS = [  # (engine, zero, offload)
    *[("deepspeed", zero, offload) for zero, offload in ZERO_OPTIONS],
    ("fsdp", 0, "none"),
    ("fsdp", 0, "all"),
]
TESTED = {
    ("full", "fsdp", 0, "none"),  # tests/test_fsdp.py
    ("lora (dora, rslora)", "fsdp", 0, "none"),
    ("full", "deepspeed", *FULL_RUN),
    ("prefix", "deepspeed", PREFIX_ZERO, "none"),
    ("lora pissa", "deepspeed", PISSA_ZERO, "none"),
    *{("freeze", "deepspeed", zero, "none") for zero, _, _ in FREEZE_CASES},
    *{("lora (dora, rslora)", "deepspeed", zero, "none") for zero, _, _ in LORA_CASES},
    *{
        ("lora + loraplus_ratio", "deepspeed", zero, "none")
        for zero, overrides, _ in LORA_CASES
        if any(o.startswith("method.loraplus_ratio") for o in overrides)
    },
    *{
        (
            f"qlora {load_recipe(ROOT / TINY, [f'model.quantization={q}'])['model']['quantization']['bits']}-bit",
            "deepspeed",
            zero,
            "none",
        )
        for zero, q in QLORA_CASES
    },
}
START, END = "<!-- table: generated by `python -m tests.methods.test_methods` -->", "<!-- end of table -->"


def methods_table() -> str:
    header = [engine_spec(engine).label(zero, offload) for engine, zero, offload in COLUMNS]
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    reasons: list[str] = []
    for row, overrides in ROWS.items():
        cells = []
        for engine, zero, offload in COLUMNS:
            settings = [f"distributed.engine={engine}", f"distributed.zero={zero}", f"distributed.offload={offload}"]
            try:
                load_recipe(ROOT / TINY, [*overrides, *settings])
            except RecipeError as err:
                reason = str(err).split(": ", 1)[1]  # drop where the value came from
                reasons += [reason] if reason not in reasons else []
                cells.append(f"refused [{reasons.index(reason) + 1}]")
                continue
            cells.append("**tested**" if (row, engine, zero, offload) in TESTED else "valid, not run")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join([START, *lines, "", *[f"[{i}] {reason}  " for i, reason in enumerate(reasons, 1)], END])


@pytest.mark.unit
def test_docs_table_is_current():
    assert methods_table() in DOC.read_text(), "docs/methods.md is stale. Fix: python -m tests.methods.test_methods"


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(text[: text.index(START)] + methods_table() + text[text.index(END) + len(END) :])
