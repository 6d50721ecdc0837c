"""`launch import-lf`'s rule: a LLaMA-Factory key left out of the recipe is a note only when it changes speed,
logging or bookkeeping; one that changes what is trained stops the import (exit 2, every such key with its
consequence and the fix) unless `--lenient`, which writes the recipe with each dropped key as a comment.
Keys the importer does not know are refused: what they change cannot be checked. Torch-free."""

from __future__ import annotations

from pathlib import Path

from launcher.errors import LFImportError
from launcher.recipe.import_lf import Note, import_lf, one_line, render
from launcher.recipe.lf_files import not_training

SPEED = "speed only"
LOGGING = "logging/bookkeeping only"
# LF keys with no recipe key that change only speed, logging or bookkeeping: a note, and why
NOTE_ONLY = {
    "save_only_model": f"{LOGGING}: checkpoints always hold the optimizer state, so a run resumes exactly",
    "use_unsloth": f"{SPEED}: Unsloth's kernels are not part of this launcher (the same training, other kernels)",
    "use_unsloth_gc": f"{SPEED}: train.gradient_checkpointing is the launcher's own",
    "enable_liger_kernel": f"{SPEED}: train.loss_kernel: auto uses liger-kernel's fused cross-entropy on CUDA "
    "where it is installed (`launch plan` says which)",
    "reward_model_type": "the same training: train.reward_model is always the output.dir of a stage: rm run (LF's full/lora "
    "types alike)",
    "predict_with_generate": f"{LOGGING}: generation metrics come from `launch eval` (or train.eval_generate)",
    "do_eval": f"{LOGGING}: evaluation runs when data.eval_datasets or data.val_size is set",
    "do_predict": f"{LOGGING}: prediction is `launch eval`",
    "run_name": f"{LOGGING}: the run is named by output.dir",
    **{
        f"swanlab_{name}": f"{LOGGING}: swanlab logs offline into output.dir/swanlog"
        for name in ("project", "workspace", "run_name", "logdir", "mode")
    },
    "logging_dir": f"{LOGGING}: TensorBoard writes to output.dir/runs",
    "logging_strategy": f"{LOGGING}: train.logging_steps decides",
    "logging_first_step": f"{LOGGING}: the first step is always logged",
    "save_strategy": f"{LOGGING}: checkpoints every train.save_steps",
    "save_safetensors": f"{LOGGING}: weights are saved as safetensors",
    "include_num_input_tokens_seen": f"{LOGGING}: token counts are always logged",
    "include_tokens_per_second": f"{LOGGING}: throughput is always logged",
    "print_param_status": f"{LOGGING}: `launch plan` shows what trains",
    "ddp_find_unused_parameters": f"{SPEED}: set by the launcher for each method",
    "dataloader_pin_memory": f"{SPEED}: the data is tokenized before training",
    "dataloader_persistent_workers": f"{SPEED}: the data is tokenized before training",
    "preprocessing_batch_size": f"{SPEED}: data.num_workers sets the tokenizing processes",
    "low_cpu_mem_usage": f"{SPEED}: models load with transformers' defaults",
    "badam_verbose": f"{LOGGING}: BAdam prints nothing here; `launch plan` shows what trains",
    "push_to_hub": f"{LOGGING}: upload output.dir with `hf upload`",
    "hub_model_id": f"{LOGGING}: upload output.dir with `hf upload`",
}
# mapped LF keys whose value has no recipe equivalent but changes only speed, logging or evaluation
NOTE_WHEN_UNMAPPED = {"flash_attn", "report_to", "eval_strategy", "infer_backend", "ddp_timeout"}
UNKNOWN = (
    "not a key the importer knows, so what it changes cannot be checked. Fix: remove it if it only changes speed "
    "or logging, else find its recipe key in docs/recipe.md"
)


def _combination_refusals(lf: dict) -> list[tuple[str, str]]:
    """LF keys whose mapping is faithful alone but not together, or whose value points where the launcher cannot."""
    refused = []
    if lf.get("use_dora") and lf.get("use_rslora"):
        refused.append(
            (
                "use_dora",
                "use_dora with use_rslora trains DoRA with rsLoRA's scaling; method.variant takes one of them. "
                "Fix: keep one (use_dora or use_rslora), or --lenient to train the last one named",
            )
        )
    if lf.get("use_muon") and float(lf.get("weight_decay") or 0) > 0:
        refused.append(
            (
                "use_muon",
                "use_muon with weight_decay > 0: LF's bundled Muon decays every parameter it leaves to AdamW, norms "
                "and biases included; here those take no weight decay, as in transformers' optimizers. Fix: "
                "weight_decay: 0, or --lenient to train with transformers' split",
            )
        )
    dataset_dir = str(lf.get("dataset_dir", ""))
    if dataset_dir.startswith("REMOTE:"):
        repo = dataset_dir.removeprefix("REMOTE:")
        refused.append(
            (
                "dataset_dir",
                f"REMOTE: is LF's hub prefix (dataset_info.json read from the hub dataset repository {repo}); the "
                f"launcher reads a local folder. Fix: `hf download {repo} --repo-type dataset --local-dir "
                f"data/{repo.rsplit('/', 1)[-1]}` and set dataset_dir to that folder",
            )
        )
    return refused


def split(lf: dict, unmapped: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(refused: keys that change what is trained, notes: speed/logging/bookkeeping), each (LF key, why)."""
    refused, notes = _combination_refusals(lf), []
    for name, why in unmapped:
        if isinstance(why, Note) or name in NOTE_WHEN_UNMAPPED:
            notes.append((name, why))
        elif name in NOTE_ONLY:
            notes.append((name, NOTE_ONLY[name]))
        else:
            refused.append((name, UNKNOWN if why == "no equivalent recipe key" else why))
    return refused, notes


def refusal(source: Path, refused: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"  {one_line(name)}: {why}" for name, why in refused)
    return (
        f"{source}: {len(refused)} LLaMA-Factory key(s) change what is trained and have no faithful mapping here, "
        f"so the recipe would train something else than LF:\n{lines}\nFix: change or remove them in {source}, or "
        "pass --lenient to write the recipe without them (each listed as a comment)"
    )


def strict_import(
    lf: dict, source: Path, base: Path, lenient: bool, predict: bool, origins: dict[str, str] | None = None
) -> tuple[str, list, list, dict]:
    """(recipe text, notes, dropped keys, the recipe); refuses a file that is no training config, and (unless
    lenient) one with keys that change what is trained. origins: read_lf's file:line of each key, for messages."""
    other = not_training(lf, source, predict)
    if other is not None:
        raise LFImportError(other)
    if predict and not (lf.get("do_predict") and not lf.get("do_train")):
        raise LFImportError(
            f"--predict: {source} is not a LLaMA-Factory predict config (do_predict: true without do_train). "
            "Fix: leave out --predict to import a training config"
        )
    recipe, unmapped = import_lf(lf, base, origins)
    refused, notes = split(lf, unmapped)
    if refused and not lenient:
        raise LFImportError(refusal(source, refused))
    dropped = [(name, f"DROPPED (--lenient), changes what is trained: {why}") for name, why in refused]
    return render(recipe, notes + dropped, source), notes, refused, recipe


def notes_table() -> str:
    """docs/import_lf.md's note-only keys, from NOTE_ONLY and NOTE_WHEN_UNMAPPED."""
    rows = ["| LLaMA-Factory key | why it is only a note |", "|---|---|"]
    rows += [f"| `{name}` | {why} |" for name, why in NOTE_ONLY.items()]
    rows += [
        f"| `{name}` | a value with no recipe equivalent changes only speed, logging or evaluation |"
        for name in sorted(NOTE_WHEN_UNMAPPED)
    ]
    return "\n".join(rows)
