"""`launch`: the command line. Verbs: train (default), plan, data, schema, chat, consolidate, merge.

Recipe errors exit with code 2 and one message before any process starts. Heavy imports
(torch, transformers) happen only inside the verbs that need them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from launcher.recipe import RecipeError, load_recipe

RUN_ARTIFACTS = ("plan.json", "adapter_config.json", "config.json", "trainer_state.json")


def _recipe_parser(verb: str, help_text: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"launch {verb}", description=help_text)
    parser.add_argument("recipe", help="path of the YAML recipe")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=2e-5")
    return parser


def _plan_from_args(args: argparse.Namespace) -> dict:
    from launcher.plan import build_plan

    recipe = load_recipe(args.recipe, args.overrides)
    return build_plan(recipe, recipe_file=str(Path(args.recipe).resolve()))


def _prepare_output_dir(plan: dict) -> None:
    """Refuse to mix a new run into an old one unless resuming or told to overwrite."""
    from launcher.checkpoint.paths import latest_checkpoint

    out = Path(plan["output_dir"])
    recipe = plan["recipe"]
    resume = recipe["train"]["resume"]
    if resume not in ("auto", "none") and not (Path(resume) / "trainer_state.json").is_file():
        raise RecipeError(f"train.resume = {resume!r} is not a complete checkpoint (no trainer_state.json). "
                          "Fix: point it at an output.dir/checkpoint-<step> folder, or use auto")
    if not out.exists() or not any(out.iterdir()):
        return
    if recipe["output"]["overwrite"]:
        if not any((out / name).exists() for name in RUN_ARTIFACTS):
            raise RecipeError(f"output.dir = {str(out)!r} holds files that are not a launcher run; refusing to "
                              "delete them even with output.overwrite=true. Fix: choose another output.dir")
        print(f"[launch] output.overwrite=true: removing the previous run in {out}", flush=True)
        shutil.rmtree(out)
        return
    if resume != "none":
        checkpoint = latest_checkpoint(out) if resume == "auto" else resume
        if checkpoint is not None:
            print(f"[launch] resuming from {checkpoint}", flush=True)
            return
    raise RecipeError(f"output.dir = {str(out)!r} already holds a run and there is no checkpoint to resume. "
                      "Fix: output.overwrite=true to replace it, or choose another output.dir")


def cmd_plan(argv: list[str]) -> int:
    args = _recipe_parser("plan", "print the resolved plan; start nothing").parse_args(argv)
    from launcher.plan import format_plan

    plan = _plan_from_args(args)
    print(format_plan(plan))
    return 0


def cmd_train(argv: list[str]) -> int:
    parser = _recipe_parser("train", "validate, plan and run a recipe")
    parser.add_argument("--node-rank", type=int, default=None,
                        help="this machine's node rank for manual multi-node runs (0 .. nnodes-1)")
    args = parser.parse_args(argv)
    from launcher.backends.local import run_node
    from launcher.plan import write_plan

    plan = _plan_from_args(args)
    nnodes = plan["world"]["nnodes"]
    node_rank = args.node_rank if args.node_rank is not None else 0
    if nnodes > 1 and args.node_rank is None:
        raise RecipeError(f"distributed.nnodes = {nnodes}: run `launch {args.recipe} --node-rank K` on each node, K = 0..{nnodes - 1}")
    if not 0 <= node_rank < nnodes:
        raise RecipeError(f"--node-rank {node_rank} is outside 0..{nnodes - 1} (distributed.nnodes = {nnodes})")
    if node_rank == 0:
        _prepare_output_dir(plan)
        write_plan(plan)
    world = plan["world"]
    print(f"[launch] {plan['recipe']['stage']}/{plan['recipe']['method']['name']} on {world['nnodes']}x"
          f"{world['nproc_per_node']} {world['device']} processes ({plan['recipe']['distributed']['launcher']}, "
          f"{'ZeRO-' + str(plan['recipe']['distributed']['zero']) if plan['deepspeed'] else 'DDP'})", flush=True)
    print(f"[launch] plan: {plan['plan_file']}", flush=True)
    if "tensorboard" in plan["recipe"]["output"]["report_to"]:
        print(f"[launch] watch: tensorboard --logdir {Path(plan['output_dir']) / 'runs'}", flush=True)
    code = run_node(plan, node_rank)
    if code != 0:
        print(f"[launch] run failed with exit code {code}; the failing rank's traceback is above "
              "(torchelastic 'Root Cause' section for torchrun/accelerate)", file=sys.stderr, flush=True)
    return code


def cmd_data(argv: list[str]) -> int:
    parser = _recipe_parser("data", "print processed examples of the recipe's datasets; train nothing")
    parser.add_argument("--preview", type=int, default=3, metavar="N", help="examples to print (default 3)")
    parser.add_argument("--dump", default=None, metavar="FILE",
                        help="write every example as JSONL (input_ids, labels, attention_mask)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    from launcher.data.preview import preview
    from launcher.data.registry import DataError

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        print(preview(recipe, args.preview, args.dump))
    except DataError as err:  # a bad dataset is the user's input: reported like a bad recipe, exit 2
        raise RecipeError(str(err)) from None
    return 0


def cmd_schema(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="launch schema", description="print the recipe's JSON schema").parse_args(argv)
    from launcher.schema import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


def cmd_chat(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch chat", description="generate with a base model (+ adapter)")
    parser.add_argument("--model", required=True, help="base model: hub id, local dir or builtin:tiny-qwen2")
    parser.add_argument("--adapter", default=None, help="PEFT adapter dir (a run's output.dir)")
    parser.add_argument("--prompt", action="append", default=[], help="a user message; repeatable; none = read stdin")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    from launcher.chat import chat

    chat(args.model, args.adapter, args.prompt, args.max_new_tokens, args.trust_remote_code)
    return 0


def cmd_consolidate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch consolidate",
                                     description="ZeRO-sharded checkpoint -> PEFT adapter or HF model dir, on CPU")
    parser.add_argument("checkpoint", help="output.dir/checkpoint-<step> of a DeepSpeed run")
    parser.add_argument("--out", required=True, help="new folder for the adapter or model")
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard of a full model")
    args = parser.parse_args(argv)
    from launcher.checkpoint.consolidate import consolidate

    try:
        out = consolidate(args.checkpoint, args.out, args.shard_size)
    except ValueError as err:  # ConsolidateError or an occupied --out
        print(f"launch consolidate: error: {err}", file=sys.stderr)
        return 2
    print(f"[launch] consolidated {args.checkpoint} -> {out}")
    return 0


def cmd_merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch merge", description="fold a LoRA adapter into its base model")
    parser.add_argument("--base", required=True, help="base model: hub id, local dir or builtin:tiny-qwen2")
    parser.add_argument("--adapter", required=True, help="PEFT adapter dir")
    parser.add_argument("--out", required=True, help="new folder for the merged model")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard")
    args = parser.parse_args(argv)
    if not (Path(args.adapter) / "adapter_config.json").is_file():
        print(f"launch merge: error: --adapter {args.adapter} has no adapter_config.json. "
              "Fix: pass a run's output.dir or a `launch consolidate` output", file=sys.stderr)
        return 2
    from launcher.checkpoint.merge import merge

    try:
        out = merge(args.base, args.adapter, args.out, args.dtype, args.shard_size)
    except ValueError as err:
        print(f"launch merge: error: {err}", file=sys.stderr)
        return 2
    print(f"[launch] merged {args.adapter} into {args.base} -> {out}")
    return 0


COMMANDS = {"train": cmd_train, "plan": cmd_plan, "data": cmd_data, "schema": cmd_schema, "chat": cmd_chat,
            "consolidate": cmd_consolidate, "merge": cmd_merge}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: launch RECIPE [k=v ...] | launch {{{','.join(COMMANDS)}}} ...\n\n{__doc__}")
        return 0 if argv else 2
    verb, rest = (argv[0], argv[1:]) if argv[0] in COMMANDS else ("train", argv)
    try:
        return COMMANDS[verb](rest)
    except RecipeError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
