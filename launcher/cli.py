"""`launch`: the command line. Verbs: train (default), plan, sbatch, data, schema, chat, consolidate, merge.

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


def _add_host_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", default=None, metavar="H1,H2", help="run only on these hostfile hosts")
    parser.add_argument("--exclude", default=None, metavar="H1,H2", help="leave out these hostfile hosts")


def _plan_from_args(args: argparse.Namespace, allow_pending: bool = False) -> dict:
    from launcher.backends.slurm import allocation, apply_allocation
    from launcher.plan import build_plan

    recipe = load_recipe(args.recipe, args.overrides)
    slurm = allocation() if recipe["distributed"]["hostfile"] is None else None
    if slurm is not None:  # inside a SLURM job: nnodes and the master come from the allocation
        apply_allocation(recipe, slurm)
    return build_plan(recipe, recipe_file=str(Path(args.recipe).resolve()), include=args.include, exclude=args.exclude,
                      allow_pending=allow_pending)


def _prepare_output_dir(plan: dict) -> None:
    """Refuse to mix a new run into an old one unless resuming or told to overwrite."""
    from launcher.checkpoint.resume import prepare_resume

    out = Path(plan["output_dir"])
    recipe = plan["recipe"]
    checkpoint = prepare_resume(plan)  # checked (intact, trusted, this recipe's) before anything is deleted
    if not out.exists() or not any(out.iterdir()):
        return
    if recipe["output"]["overwrite"]:
        if not any((out / name).exists() for name in RUN_ARTIFACTS):
            raise RecipeError(f"output.dir = {str(out)!r} holds files that are not a launcher run; refusing to "
                              "delete them even with output.overwrite=true. Fix: choose another output.dir")
        print(f"[launch] output.overwrite=true: removing the previous run in {out}", flush=True)
        shutil.rmtree(out)
        return
    if checkpoint is not None:
        print(f"[launch] resuming from {checkpoint}", flush=True)
        return
    raise RecipeError(f"output.dir = {str(out)!r} already holds a run and there is no checkpoint to resume. "
                      "Fix: output.overwrite=true to replace it, or choose another output.dir")


def cmd_plan(argv: list[str]) -> int:
    parser = _recipe_parser("plan", "print the resolved plan; start nothing")
    _add_host_filters(parser)
    args = parser.parse_intermixed_args(argv)
    from launcher.plan import format_plan

    plan = _plan_from_args(args, allow_pending=True)
    print(format_plan(plan))
    return 0


def cmd_train(argv: list[str]) -> int:
    parser = _recipe_parser("train", "validate, plan and run a recipe")
    parser.add_argument("--node-rank", type=int, default=None,
                        help="this machine's node rank for manual multi-node runs (0 .. nnodes-1); "
                             "default: NODE_RANK, else SLURM_NODEID inside a SLURM job, else 0")
    _add_host_filters(parser)
    args = parser.parse_intermixed_args(argv)
    from launcher.backends.local import run_node
    from launcher.nodes import discard_plan_copy, preflight, this_node_rank
    from launcher.plan import write_plan

    plan = _plan_from_args(args)
    node_rank = this_node_rank(args.node_rank, plan)
    if node_rank == 0:
        _prepare_output_dir(plan)
    preflight(plan, node_rank)  # port, hosts: before any process starts
    if node_rank == 0:
        write_plan(plan)
    else:  # every node has its own copy: no shared file system needed
        write_plan(plan, plan["nodes"][node_rank]["plan_file"])
    world = plan["world"]
    print(f"[launch] {plan['recipe']['stage']}/{plan['recipe']['method']['name']} on {world['nnodes']}x"
          f"{world['nproc_per_node']} {world['device']} processes ({plan['recipe']['distributed']['launcher']}, "
          f"{'ZeRO-' + str(plan['recipe']['distributed']['zero']) if plan['deepspeed'] else 'DDP'})", flush=True)
    print(f"[launch] node {node_rank} of {world['nnodes']}, rendezvous {world['master_addr']}:{world['master_port']}, "
          f"plan: {plan['nodes'][node_rank]['plan_file']}", flush=True)
    if "tensorboard" in plan["recipe"]["output"]["report_to"]:
        print(f"[launch] watch: tensorboard --logdir {Path(plan['output_dir']) / 'runs'}", flush=True)
    if plan["nodes"][0]["host"]:
        from launcher.backends.ssh import run_hostfile

        code = run_hostfile(plan)
    else:
        code = run_node(plan, node_rank)
    if node_rank > 0:  # node 0's output.dir/plan.json stays as the run's record
        discard_plan_copy(plan["nodes"][node_rank]["plan_file"])
    if code != 0:
        print(f"[launch] run failed with exit code {code}; the first failing rank's last lines are above, "
              f"every rank's whole output in {Path(plan['output_dir']) / 'logs'}", file=sys.stderr, flush=True)
    return code


def cmd_sbatch(argv: list[str]) -> int:
    parser = _recipe_parser("sbatch", "write (and submit) a SLURM batch script for the recipe's slurm section")
    parser.add_argument("--script", default=None, metavar="FILE",
                        help="where to write the script (default: <output.dir>.sbatch); the job log goes beside it")
    parser.add_argument("--submit", action="store_true", help="submit it with sbatch and print the job id")
    args = parser.parse_intermixed_args(argv)
    from launcher.backends.slurm import batch_script, submit

    recipe = load_recipe(args.recipe, args.overrides)
    script = Path(args.script or f"{recipe['output']['dir'].rstrip('/')}.sbatch").resolve()
    log = str(script.with_suffix("")) + "-%j.out"
    text = batch_script(recipe, args.recipe, args.overrides, log, str(Path.cwd()))
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    print(f"[launch] wrote {script} (job log: {log})", flush=True)
    if args.submit:
        job = submit(script)
        print(f"[launch] submitted SLURM job {job}; watch: squeue -j {job}; log: {log.replace('%j', job)}", flush=True)
        print(job, flush=True)
    return 0


def cmd_data(argv: list[str]) -> int:
    parser = _recipe_parser("data", "print the rows the recipe's stage would train on, and their counts; train nothing")
    parser.add_argument("--preview", type=int, default=3, metavar="N", help="rows to print (default 3)")
    parser.add_argument("--dump", default=None, metavar="FILE",
                        help="write every row as JSONL, the columns the stage's trainer reads "
                             "(sft: input_ids, labels, attention_mask; pt: input_ids, labels; dpo, orpo: prompt_ids, "
                             "chosen_ids, rejected_ids; rm: chosen_ids, rejected_ids; kto: prompt_ids, completion_ids, "
                             "label; ppo: input_ids)")
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
    parser.add_argument("--prompt", action="append", default=[],
                        help="a user message; repeatable; none = interactive on a terminal, else one prompt per stdin line")
    parser.add_argument("--input", default=None, metavar="FILE.jsonl", help="batch prediction: openai or alpaca rows")
    parser.add_argument("--output", default=None, metavar="FILE.jsonl", help="batch prediction: prompt, prediction, label rows")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    from launcher.chat import ChatError, Sampling, chat

    try:
        sampling = Sampling(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.top_k, args.seed)
        chat(args.model, args.adapter, args.prompt, sampling, args.trust_remote_code, args.input, args.output)
    except ChatError as err:
        print(f"launch chat: error: {err}", file=sys.stderr)
        return 2
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
        notes = merge(args.base, args.adapter, args.out, args.dtype, args.shard_size)
    except ValueError as err:  # MergeError or an occupied --out
        print(f"launch merge: error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"[launch] {note}")
    print(f"[launch] merged {args.adapter} into {args.base} -> {args.out}")
    return 0


COMMANDS = {"train": cmd_train, "plan": cmd_plan, "sbatch": cmd_sbatch, "data": cmd_data, "schema": cmd_schema, "chat": cmd_chat,
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
