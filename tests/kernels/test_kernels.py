"""The speed paths compute what the plain path computes: padding-free neat packing under
flex_attention gives the unpacked loss and gradients, the chunked loss equals the full-logits
loss, a compiled model equals the eager one without recompiling per row length; and the planner
picks or refuses kernels with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, TrainingArguments

from launcher import cli
from launcher.data.collate import PaddingCollator
from launcher.data.packing import pack_examples
from launcher.data.tokenize import IGNORE_INDEX
from launcher.kernels.attention import without_right_padding_mask
from launcher.kernels.loss import chunked_cross_entropy
from launcher.kernels.trainer import KernelTrainer
from launcher.model.builtin import materialize

CUTOFF = 64


def _samples() -> list[dict]:
    """Very short samples (a 1-token answer) mixed with cutoff-length ones, prompts masked."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for prompt, answer in [(CUTOFF - 20, 20), (2, 1), (1, 1), (30, CUTOFF - 30), (3, 2), (5, 1), (10, 40), (1, 2)]:
        ids = torch.randint(3, 2000, (prompt + answer,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return samples


def _model(attn: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(
        materialize("builtin:tiny-qwen2"), dtype=torch.float32, attn_implementation=attn
    )


def _trainer(model, tmp_path, attn: str, loss: str) -> KernelTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    return KernelTrainer(model=model, args=args, kernels={"attn": attn, "loss": loss}, max_tokens=2 * CUTOFF)


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return grads


def unpacked_reference(model, samples: list[dict]) -> tuple[float, int, dict]:
    """The oracle: every sample alone (no packing), loss = sum over trained tokens / their count,
    and the gradients of that loss."""
    trained = sum(sum(label != IGNORE_INDEX for label in s["labels"][1:]) for s in samples)
    total = 0.0
    for sample in samples:
        batch = PaddingCollator(0)([sample])
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
        loss = (
            F.cross_entropy(
                logits, batch["labels"][0, 1:].to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            / trained
        )
        loss.backward()
        total += loss.item()
    return total, trained, _grads(model)


@pytest.mark.unit
def test_padding_free_rows_hold_no_square_tensor():
    rows = pack_examples(_samples(), CUTOFF).rows
    assert len(rows) >= 2
    batch = PaddingCollator(0, "neat", padding_free=True)(rows)
    tokens = sum(len(s["input_ids"]) for s in _samples())
    assert set(batch) == {"input_ids", "labels", "position_ids", "document_ids"}
    assert all(t.shape == (1, tokens) for t in batch.values())  # one row, no padding, nothing L x L
    assert batch["document_ids"][0].unique().numel() == len(_samples())
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    assert starts.numel() == len(_samples()) and (batch["labels"][0, starts[1:]] == IGNORE_INDEX).all()


@pytest.mark.multiproc
def test_flex_padding_free_packing_gives_the_unpacked_loss(tmp_path):
    """The loss, for both loss kernels. Forward only: torch 2.13 has no flex_attention backward on
    CPU. flex_attention() refuses any CPU input that requires grad (_validate_device: "FlexAttention
    does not support backward on CPU"), eager or compiled, and lifting that check still fails in
    inductor, whose CPU flex template is inference-only (no logsumexp output; pytorch#148752,
    pytorch#169646). The gradients of this row are proved below with sdpa, and with flex_attention
    on CUDA (tests/test_kernels_gpu.py)."""
    samples = _samples()
    expected, trained, _ = unpacked_reference(_model("sdpa"), samples)
    model = _model("flex_attention").train()  # one model: flex_attention compiles its kernel on the first call
    batch = PaddingCollator(0, "neat", padding_free=True)(pack_examples(samples, CUTOFF).rows)
    with torch.no_grad():
        for loss in ("plain", "chunked"):
            got = _trainer(model, tmp_path, "flex_attention", loss).compute_loss(
                model, batch, num_items_in_batch=torch.tensor(trained)
            )
            assert abs(got.item() - expected) < 1e-5, (loss, got.item(), expected)


@pytest.mark.unit
def test_padding_free_row_gives_the_unpacked_gradients(tmp_path):
    """The padding-free row itself (position_ids, labels, one row, no mask) gives the unpacked loss
    and gradients, for both loss kernels. sdpa stands in for flex_attention here (no CPU backward,
    see above): transformers keeps the samples apart from the restarting position_ids alone, so a
    wrong boundary or label in the row changes the result."""
    samples = _samples()
    model = _model("sdpa").train()
    expected, trained, expected_grads = unpacked_reference(model, samples)
    batch = PaddingCollator(0, "neat", padding_free=True)(pack_examples(samples, CUTOFF).rows)
    del batch["document_ids"]  # what flex_attention's block mask is built from; sdpa reads position_ids
    for loss in ("plain", "chunked"):
        value = _trainer(model, tmp_path, "sdpa", loss).compute_loss(
            model, dict(batch), num_items_in_batch=torch.tensor(trained)
        )
        value.backward()
        grads = _grads(model)
        assert abs(value.item() - expected) < 1e-5, (loss, value.item(), expected)
        for name, grad in expected_grads.items():
            assert torch.allclose(grads[name], grad, atol=1e-5), (loss, name, (grads[name] - grad).abs().max())


@pytest.mark.unit
def test_right_padded_rows_reach_sdpa_without_a_square_mask(tmp_path, monkeypatch):
    """Right-padded rows (greedy packing, padding to the longest) give the unpadded loss and gradients while
    sdpa runs is_causal with no (batch, 1, L, L) mask, which at 20k tokens held 2 GiB per rank; a left-padded
    mask, which changes what real tokens see, is kept."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, **kwargs):
        calls.append((attn_mask, kwargs.get("is_causal")))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    samples = _samples()
    model = _model("sdpa").train()
    expected, trained, expected_grads = unpacked_reference(model, samples)
    batch = PaddingCollator(0)(samples)
    assert (batch["attention_mask"] == 0).any()  # the rows are padded
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    value = _trainer(model, tmp_path, "sdpa", "plain").compute_loss(
        model, dict(batch), num_items_in_batch=torch.tensor(trained)
    )
    value.backward()
    assert calls and all(mask is None and causal for mask, causal in calls)
    assert abs(value.item() - expected) < 1e-5, (value.item(), expected)
    for name, grad in _grads(model).items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-5), name
    left = {**batch, "attention_mask": batch["attention_mask"].flip(-1)}
    assert without_right_padding_mask(left, "sdpa", routed=False)["attention_mask"] is left["attention_mask"]


@pytest.mark.multiproc
def test_chunked_loss_in_the_trainer_gives_the_plain_gradients(tmp_path):
    model = _model("sdpa").train()
    batch = PaddingCollator(0)(_samples())
    results = {}
    for loss in ("plain", "chunked"):
        value = _trainer(model, tmp_path, "sdpa", loss).compute_loss(
            model, dict(batch), num_items_in_batch=torch.tensor(97)
        )
        value.backward()
        results[loss] = value.item(), _grads(model)
    assert abs(results["plain"][0] - results["chunked"][0]) < 1e-6
    for name, grad in results["plain"][1].items():
        assert torch.allclose(results["chunked"][1][name], grad, atol=1e-6), name


@pytest.mark.multiproc
def test_chunked_loss_and_gradients_equal_full_logits():
    torch.manual_seed(0)
    vocab, hidden_size = 5000, 64
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(2, 300, hidden_size, requires_grad=True)
    labels = torch.randint(0, vocab, (2, 300))
    labels[:, :40] = IGNORE_INDEX  # prompts
    for num_items in (None, 1000):
        logits = head(hidden).float()[:, :-1]
        targets = labels[:, 1:]
        plain = F.cross_entropy(
            logits.reshape(-1, vocab),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="mean" if num_items is None else "sum",
        )
        plain = plain if num_items is None else plain / num_items
        plain_grads = torch.autograd.grad(plain, [hidden, head.weight])
        chunked = chunked_cross_entropy(hidden, head, labels, chunks=7, num_items_in_batch=num_items)
        chunked_grads = torch.autograd.grad(chunked, [hidden, head.weight])
        assert abs(chunked.item() - plain.item()) < 1e-6
        for a, b in zip(chunked_grads, plain_grads):
            assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


@pytest.mark.unit
def test_chunked_loss_of_two_sequence_shards_sums_to_the_whole_rows():
    """Sequence parallelism: each shard passes shift_labels, shifted over the whole row before the split (a
    shard's last target is the next shard's first token); the shards' summed losses and gradients add up to the
    unsplit rows'."""
    torch.manual_seed(0)
    vocab, hidden_size = 300, 16
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(2, 64, hidden_size, requires_grad=True)
    labels = torch.randint(0, vocab, (2, 64))
    labels[:, :10] = IGNORE_INDEX
    whole = chunked_cross_entropy(hidden, head, labels, chunks=3, num_items_in_batch=1)
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    shards = sum(
        chunked_cross_entropy(
            hidden[:, part], head, None, chunks=3, num_items_in_batch=1, shift_labels=shifted[:, part]
        )
        for part in (slice(0, 32), slice(32, 64))
    )
    assert torch.allclose(shards, whole, rtol=1e-6)
    for a, b in zip(
        torch.autograd.grad(shards, [hidden, head.weight]), torch.autograd.grad(whole, [hidden, head.weight])
    ):
        assert torch.allclose(a, b, atol=1e-6)


def _dft_by_hand(logits: torch.Tensor, labels: torch.Tensor, count) -> torch.Tensor:
    """Dynamic Fine-Tuning's formula: -sum over trained tokens of sg(p) * log p, p the next token's probability."""
    log_p = F.log_softmax(logits[:, :-1].float(), -1)
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    token_log_p = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[trained]
    return -(token_log_p.exp().detach() * token_log_p).sum() / count


@pytest.mark.unit
def test_dft_loss_in_the_sft_trainer_is_the_formula_on_the_tiny_models_logits(tmp_path, monkeypatch):
    from launcher.kernels.dft import dft_loss
    from launcher.kernels.trainer import lm_trainer
    from launcher.plan import build_plan
    from launcher.recipe.load import load_recipe

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    plan = build_plan(load_recipe("recipes/sft_tiny.yaml", ["train.sft_loss=dft", f"output.dir={tmp_path}"]))
    assert plan["kernels"]["loss"] == "plain"
    model = _model("sdpa").train()
    batch = PaddingCollator(0)(_samples())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    trainer = lm_trainer(plan, args, model, None, [], [], [], PaddingCollator(0))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = _dft_by_hand(logits, batch["labels"], 97)
    assert trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(97)).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    plain = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum") / 97
    assert expected.item() < plain.item()  # every token's loss shrinks by its probability
    trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    for count in (None, 97):  # without the Trainer's count: the mean over this batch's trained tokens
        leaf = logits.clone().requires_grad_()
        ours = dft_loss({"logits": leaf}, batch["labels"], count)
        (ours_grad,) = torch.autograd.grad(ours, leaf)
        theirs = _dft_by_hand(leaf, batch["labels"], trained if count is None else count)
        (their_grad,) = torch.autograd.grad(theirs, leaf)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
        assert torch.allclose(ours_grad, their_grad, atol=1e-7)  # the weight is detached: no gradient through it


def _plan(capsys, *overrides: str) -> tuple[int, str]:
    code = cli.main(["plan", "recipes/sft_tiny.yaml", *overrides])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.unit
def test_plan_names_the_kernels_and_why(capsys):
    code, out = _plan(capsys, "data.packing=neat")  # auto on CPU: sdpa, and the plan says it is the dense fallback
    assert code == 0 and "attention: sdpa (auto: neat packing on CPU" in out and "packing: padding-free" not in out
    assert "not installed: flash-attn, liger-kernel" in out  # what installing .[gpu] would change
    code, out = _plan(capsys, "model.path=Qwen/Qwen2-0.5B")  # a 152k vocabulary: auto chunks the loss
    assert code == 0 and "loss: chunked (auto: vocabulary 151,936" in out


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.attn=flash_attention_2"], "model.attn = 'flash_attention_2' needs a CUDA GPU"),
        (["model.attn=flex_attention"], "model.attn = 'flex_attention' trains on CUDA only"),
        (["train.loss_kernel=liger"], "train.loss_kernel = 'liger' needs a CUDA GPU"),
        (["train.sft_loss=dft", "train.loss_kernel=chunked"], "cannot weight it as train.sft_loss: dft does"),
        (
            ["stage=dpo", "data.datasets=[demo_pref]", "train.loss_kernel=chunked"],
            "train.loss_kernel = 'chunked' applies to stages pt/sft",
        ),
        (
            ["method={name: prefix}", "train.gradient_checkpointing=false", "distributed.zero=2", "train.compile=true"],
            "train.compile = true does not work with method.name: prefix",
        ),
        (
            ["method={name: prefix}", "train.gradient_checkpointing=false", "distributed.zero=2"]
            + ["train.loss_kernel=chunked"],
            "train.loss_kernel = 'chunked' does not work with method.name: prefix",
        ),
        (
            ["distributed.engine=fsdp", "distributed.zero=0", "method={name: full}", "train.loss_kernel=chunked"],
            "train.loss_kernel = 'chunked' cannot train the LM head under distributed.engine: fsdp",
        ),
    ],
)
def test_plan_refuses_kernels_that_cannot_run_here(capsys, overrides, message):
    code, out = _plan(capsys, *overrides)
    assert code == 2 and message in out and "Fix:" in out, out


@pytest.mark.unit
def test_auto_keeps_the_plain_loss_where_fsdp_trains_the_lm_head():
    """FSDP2 frees the trained head's gathered weight between the chunked loss's slices (a segmentation fault
    on CPU): auto picks plain there, chunked where the head is frozen or under DeepSpeed."""
    from launcher.kernels.choice import loss_choice

    fsdp = {"engine": "fsdp", "zero": 0}
    head = [
        _recipe(method={"name": "full"}, distributed=fsdp),
        _recipe(method={"name": "freeze", "extra_modules": ["lm_head"]}, distributed=fsdp),
        _recipe(method={"name": "lora", "additional_target": ["embed_tokens"]}, distributed=fsdp),
        _recipe(method={"name": "lora", "additional_target": ["model.embed_tokens"]}, distributed=fsdp),
    ]
    assert {loss_choice(recipe, False, 151_936)[0] for recipe in head} == {"plain"}
    frozen_head = [
        _recipe(distributed=fsdp),
        _recipe(method={"name": "freeze", "extra_modules": ["norm"]}, distributed=fsdp),
        _recipe(method={"name": "full"}, distributed={"zero": 3}),
    ]
    assert {loss_choice(recipe, False, 151_936)[0] for recipe in frozen_head} == {"chunked"}


def _recipe(**sections) -> dict:
    from launcher.recipe.load import resolve

    return resolve({"model": {"path": "builtin:tiny-qwen2"}, **sections}, {})


@pytest.mark.unit
def test_auto_on_cuda_packs_padding_free_and_fuses_what_is_installed():
    """The planner's choice on a CUDA machine (the choice reads only the device and the installed
    packages, so it is checked here with on_gpu=True): flex_attention padding-free for neat
    packing without flash-attn, chunked loss for a large vocabulary without liger."""
    from launcher.kernels.choice import installed, kernel_plan

    kernels = kernel_plan(_recipe(data={"packing": "neat"}), on_gpu=True, vocab_size=151_936)
    if not installed("flash_attn"):
        assert kernels["attn"] == "flex_attention" and kernels["padding_free"]
    if not installed("liger_kernel"):
        assert kernels["loss"] == "chunked"
    assert (
        kernel_plan(_recipe(), on_gpu=True, vocab_size=2048)["padding_free"] is False
    )  # no packing: nothing to separate
    assert kernel_plan(_recipe(stage="dpo"), on_gpu=True, vocab_size=151_936)["loss"] == "plain"  # TRL owns its loss
    prefix = _recipe(method={"name": "prefix"}, train={"gradient_checkpointing": False}, distributed={"zero": 2})
    assert kernel_plan(prefix, on_gpu=True, vocab_size=151_936)["loss"] == "plain"  # PEFT's forward adds the prefix


@pytest.mark.multiproc
def test_compiled_layers_match_eager_without_recompiling_per_length(tmp_path):
    """train.compile on CPU, with gradient checkpointing: padded batches and neat-packed ones (4D
    mask, restarting position_ids: the CPU packing path) give eager's loss, and a second batch of
    another length runs the same compiled code (dynamic shapes): no recompile per batch shape."""
    from launcher.kernels.compile import compile_layers

    model = _model("sdpa").train()
    model.gradient_checkpointing_enable({"use_reentrant": False})
    samples, padded, neat = _samples(), PaddingCollator(0), PaddingCollator(0, "neat")
    short = [sample for sample in samples if len(sample["input_ids"]) < 10]
    batches = {
        "padded": (padded(samples[1:3]), padded(samples[:2])),
        "neat": (neat(pack_examples(short, 16).rows), neat(pack_examples(samples, CUTOFF).rows)),
    }
    for first, second in batches.values():
        assert first["input_ids"].shape[1] != second["input_ids"].shape[1]
    eager = {kind: [model(**dict(b)).loss.item() for b in pair] for kind, pair in batches.items()}
    assert compile_layers(model) == model.config.num_hidden_layers
    for kind, (first, second) in batches.items():
        losses = [model(**dict(first)).loss]  # the first batch of a kind may compile (a new mask kind)
        losses[0].backward()
        with torch._dynamo.config.patch(error_on_recompile=True):
            losses.append(model(**dict(second)).loss)
            losses[1].backward()
        for got, expected in zip(losses, eager[kind]):
            assert abs(got.item() - expected) < 1e-5, (kind, got.item(), expected)
