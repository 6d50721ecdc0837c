"""`launch`: the command line. Verbs: train (default), plan, sbatch, data, schema, chat, consolidate, merge,
expand, import-lf, eval (= predict), serve, download, ui.

Recipe errors exit with code 2 and one message before any process starts. Heavy imports
(torch, transformers) happen only inside the verbs that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import DataError, LauncherError, RecipeError
from launcher.recipe.load import load_recipe, output_folder
from launcher.util import quiet

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def _parser(verb: str, help_text: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"launch {verb}", description=help_text)


def _recipe_parser(verb: str, help_text: str) -> argparse.ArgumentParser:
    parser = _parser(verb, help_text)
    parser.add_argument("recipe", help="path of the YAML recipe")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=2e-5")
    return parser


def _add_host_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", default=None, metavar="H1,H2", help="run only on these hostfile hosts")
    parser.add_argument("--exclude", default=None, metavar="H1,H2", help="leave out these hostfile hosts")


def _plan_from_args(args: argparse.Namespace, allow_pending: bool = False) -> Plan:
    from launcher.backends.slurm import allocation, apply_allocation
    from launcher.plan import build_plan

    recipe = load_recipe(args.recipe, args.overrides)
    slurm = allocation() if recipe["distributed"]["hostfile"] is None else None
    if slurm is not None:  # inside a SLURM job: nnodes and the master come from the allocation
        apply_allocation(recipe, slurm)
    return build_plan(
        recipe,
        recipe_file=str(Path(args.recipe).resolve()),
        include=args.include,
        exclude=args.exclude,
        allow_pending=allow_pending,
    )


def _check_output_dir(plan: Plan) -> bool:
    """Refuse to mix a new run into an old one unless resuming or told to overwrite; True: the
    previous run is to be replaced (by start_run, once every other check has passed). Deletes nothing."""
    from launcher.checkpoint.resume import prepare_resume
    from launcher.plan.output_dir import require_run_dir

    out = Path(plan["output_dir"])
    recipe = plan["recipe"]  # output.dir apart from the inputs and creatable: checked by build_plan
    checkpoint = prepare_resume(plan)  # checked (intact, trusted, this recipe's) before anything is deleted
    if not out.exists() or not any(out.iterdir()):
        return False
    if recipe["output"]["overwrite"]:
        require_run_dir(out)
        return True
    if checkpoint is not None:
        print(f"[launch] resuming from {checkpoint}", flush=True)
        return False
    raise RecipeError(
        f"output.dir = {str(out)!r} already holds a run and there is no checkpoint to resume. "
        "Fix: output.overwrite=true to replace it, or choose another output.dir"
    )


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
    parser.add_argument(
        "--node-rank",
        type=int,
        default=None,
        help="this machine's node rank for manual multi-node runs (0 .. nnodes-1); "
        "default: NODE_RANK, else SLURM_NODEID inside a SLURM job, else 0",
    )
    _add_host_filters(parser)
    args = parser.parse_intermixed_args(argv)
    from launcher.backends.local import run_node
    from launcher.backends.nodes import check_before_launch, this_node_rank
    from launcher.checkpoint.resume import RunComplete
    from launcher.plan import write_plan
    from launcher.plan.files import discard_plan_copy
    from launcher.plan.format import engine_label
    from launcher.plan.output_dir import start_run
    from launcher.plan.preflight import ensure_model
    from launcher.plan.trackers import tracker_lines

    plan = _plan_from_args(args)
    if plan["memory"].get("refusal"):  # before the output dir is touched or anything starts
        raise RecipeError(plan["memory"]["refusal"])
    node_rank = this_node_rank(args.node_rank, plan)
    try:
        replace = _check_output_dir(plan) if node_rank == 0 else False
    except RunComplete as done:  # a finished run started again: nothing to train, nothing written
        print(f"[launch] {done}", flush=True)
        return 0
    check_before_launch(plan, node_rank)  # port, hosts: before any process starts
    ensure_model(plan)  # a hub id: in the cache, fetched now by this process, or refused offline
    if node_rank == 0:  # every check passed: only now is a previous run replaced and plan.json written
        start_run(plan["output_dir"], replace)
        write_plan(plan)
    else:  # every node has its own copy: no shared file system needed
        write_plan(plan, plan["nodes"][node_rank]["plan_file"])
    world = plan["world"]
    print(
        f"[launch] {plan['recipe']['stage']}/{plan['recipe']['method']['name']} on {world['nnodes']}x"
        f"{world['nproc_per_node']} {world['device']} processes ({plan['recipe']['distributed']['launcher']}, "
        f"{engine_label(plan)})",
        flush=True,
    )
    print(
        f"[launch] node {node_rank} of {world['nnodes']}, rendezvous {world['master_addr']}:{world['master_port']}, "
        f"plan: {plan['nodes'][node_rank]['plan_file']}",
        flush=True,
    )
    if "tensorboard" in plan["recipe"]["output"]["report_to"]:
        print(f"[launch] watch: tensorboard --logdir {Path(plan['output_dir']) / 'runs'}", flush=True)
    for line in tracker_lines(plan["recipe"]["output"]["report_to"], plan["output_dir"]):
        print(f"[launch] {line}", flush=True)
    if plan["nodes"][0]["host"]:
        from launcher.backends.ssh import run_hostfile

        code = run_hostfile(plan)
    else:
        code = run_node(plan, node_rank)
    if node_rank > 0:  # node 0's output.dir/plan.json stays as the run's record
        discard_plan_copy(plan["nodes"][node_rank]["plan_file"])
    if code != 0:
        print(
            f"[launch] run failed with exit code {code}; the first failing rank's last lines are above, "
            f"every rank's whole output in {Path(plan['output_dir']) / 'logs'}",
            file=sys.stderr,
            flush=True,
        )
    return code


def cmd_sbatch(argv: list[str]) -> int:
    parser = _recipe_parser("sbatch", "write (and submit) a SLURM batch script for the recipe's slurm section")
    parser.add_argument(
        "--script",
        default=None,
        metavar="FILE",
        help="where to write the script (default: <output.dir>.sbatch); the job log goes beside it",
    )
    parser.add_argument("--submit", action="store_true", help="submit it with sbatch and print the job id")
    parser.add_argument("--force", action="store_true", help="replace the script if it exists (never an input)")
    args = parser.parse_intermixed_args(argv)
    from launcher.backends.slurm import batch_script, submit
    from launcher.recipe.inputs import run_inputs
    from launcher.util.output_file import check_output_file

    recipe = load_recipe(args.recipe, args.overrides)
    script = check_output_file(
        "--script",
        args.script or f"{output_folder(recipe).rstrip('/')}.sbatch",
        run_inputs(recipe, args.recipe),  # the job's inputs too: the script must not land on what it reads
        args.force,
    )
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
    parser.add_argument(
        "--dump",
        default=None,
        metavar="FILE",
        help="write every row as JSONL, the columns the stage's trainer reads "
        "(sft: input_ids, labels, attention_mask; pt: input_ids, labels; dpo, orpo: prompt_ids, "
        "chosen_ids, rejected_ids; rm: chosen_ids, rejected_ids; kto: prompt_ids, completion_ids, "
        "label; ppo: input_ids)",
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists (never an input)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    from launcher.data.preview import preview
    from launcher.recipe.inputs import run_inputs
    from launcher.util.output_file import check_output_file

    recipe = load_recipe(args.recipe, args.overrides)
    if args.dump:
        check_output_file("--dump", args.dump, run_inputs(recipe, args.recipe), args.force)
    print(preview(recipe, args.preview, args.dump))
    return 0


def cmd_schema(argv: list[str]) -> int:
    parser = _parser("schema", "print the recipe's JSON schema")
    parser.add_argument("--markdown", action="store_true", help="the key reference as Markdown (docs/recipe.md)")
    parser.add_argument(
        "--typeddict", action="store_true", help="the recipe's TypedDicts as Python (launcher/recipe/types.py)"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        from launcher.recipe.schema_doc import recipe_reference

        print(recipe_reference(), end="")
        return 0
    if args.typeddict:
        from launcher.recipe.schema_types import recipe_typeddicts

        print(recipe_typeddicts(), end="")
        return 0
    from launcher.recipe.schema import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


def _weights_arguments(parser: argparse.ArgumentParser, dtype_auto: str) -> None:
    """--dtype and --load-in: how chat and serve load the model's weights (chat.load_for_chat)."""
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"), help=dtype_auto)
    parser.add_argument(
        "--load-in", default=None, choices=("4bit", "8bit"), help="quantize the linear layers (bitsandbytes)"
    )


def cmd_chat(argv: list[str]) -> int:
    parser = _parser("chat", "generate with a base model (+ adapter)")
    parser.add_argument("--model", required=True, help="base model: hub id, local dir or builtin:tiny-qwen2")
    parser.add_argument("--adapter", default=None, help="PEFT adapter dir (a run's output.dir)")
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="a user message; repeatable; none = interactive on a terminal, else one prompt per stdin line",
    )
    parser.add_argument(
        "--system", default=None, help="a system message opening each conversation (not --input's rows: theirs)"
    )
    parser.add_argument("--input", default=None, metavar="FILE.jsonl", help="batch prediction: openai or alpaca rows")
    parser.add_argument(
        "--output", default=None, metavar="FILE.jsonl", help="batch prediction: prompt, prediction, label rows"
    )
    parser.add_argument("--force", action="store_true", help="replace --output if it exists (never an input)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--trust-remote-code", action="store_true")
    _weights_arguments(parser, "auto: the adapter's training dtype (its plan.json), else bf16 on a GPU, fp32 on CPU")
    parser.add_argument(
        "--template",
        default=None,
        help="chat template (default: the one the run trained with, "
        "from its plan.json; a plain model folder: its tokenizer's)",
    )
    args = parser.parse_args(argv)
    from launcher.infer.chat import Sampling, chat
    from launcher.model.hub import model_folder
    from launcher.util.output_file import check_output_file

    if args.output:
        inputs = [("--input", args.input), ("--model", model_folder(args.model)), ("--adapter", args.adapter)]
        check_output_file("--output", args.output, [(what, path) for what, path in inputs if path], args.force)

    sampling = Sampling(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.top_k, args.seed)
    chat(
        args.model,
        args.adapter,
        args.prompt,
        sampling,
        args.trust_remote_code,
        args.input,
        args.output,
        args.dtype,
        args.template,
        args.load_in,
        args.system,
    )
    return 0


def cmd_consolidate(argv: list[str]) -> int:
    parser = _parser("consolidate", "ZeRO- or FSDP-sharded checkpoint -> PEFT adapter or HF model dir, on CPU")
    parser.add_argument("checkpoint", help="output.dir/checkpoint-<step> of a DeepSpeed run")
    parser.add_argument(
        "--out", required=True, help="new (or empty) folder for the adapter or model; never one holding files"
    )
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard of a full model")
    args = parser.parse_args(argv)
    from launcher.checkpoint.consolidate import consolidate

    out = consolidate(args.checkpoint, args.out, args.shard_size)
    print(f"[launch] consolidated {args.checkpoint} -> {out}")
    return 0


def cmd_merge(argv: list[str]) -> int:
    parser = _parser("merge", "fold a LoRA adapter into its base model")
    parser.add_argument("--base", required=True, help="base model: hub id, local dir or builtin:tiny-qwen2")
    parser.add_argument("--adapter", required=True, help="PEFT adapter dir")
    parser.add_argument(
        "--out", required=True, help="new (or empty) folder for the merged model; never one holding files"
    )
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard")
    args = parser.parse_args(argv)
    from launcher.checkpoint.merge import merge

    notes = merge(args.base, args.adapter, args.out, args.dtype, args.shard_size)
    for note in notes:
        print(f"[launch] {note}")
    print(f"[launch] merged {args.adapter} into {args.base} -> {args.out}")
    return 0


def cmd_expand(argv: list[str]) -> int:
    parser = _parser("expand", "LLaMA Pro: a copy of a model with N identity blocks interleaved in its decoder")
    parser.add_argument("--base", required=True, help="base model: hub id, local dir or builtin:tiny-qwen2")
    parser.add_argument("--blocks", required=True, type=int, help="new blocks; one after every layers / N layers")
    parser.add_argument(
        "--out", required=True, help="new (or empty) folder for the expanded model; never one holding files"
    )
    parser.add_argument("--shard-size", default="5GB", help="largest safetensors shard")
    args = parser.parse_args(argv)
    from launcher.checkpoint.expand import expand

    train_with = expand(args.base, args.out, args.blocks, args.shard_size)
    print(f"[launch] expanded {args.base} by {args.blocks} identity blocks -> {args.out}")
    print(f"[launch] train them with {train_with}")
    return 0


def cmd_import_lf(argv: list[str]) -> int:
    parser = _parser("import-lf", "a LLaMA-Factory training YAML as a recipe")
    parser.add_argument("lf_yaml", help="LLaMA-Factory YAML (llamafactory-cli train's argument file)")
    parser.add_argument(
        "--out", default=None, metavar="RECIPE.yaml", help="where to write the recipe (default: stdout)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace --out if it exists (never the LF YAML or an input of the run)"
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="write the recipe even where LF keys that change what is trained have no mapping (each as a comment)",
    )
    parser.add_argument("--predict", action="store_true", help="an LF predict config -> a recipe for `launch eval`")
    args = parser.parse_args(argv)
    from launcher.recipe.import_lf import lf_inputs, one_line, read_lf
    from launcher.recipe.lf_strict import strict_import

    source = Path(args.lf_yaml)
    lf, origins = read_lf(source)
    text, notes, dropped, recipe = strict_import(lf, source, Path.cwd(), args.lenient, args.predict, origins)
    next_step = f"launch {'eval' if args.predict else 'plan'} {args.out}"
    if args.out is None:
        print(text, end="")
    else:
        from launcher.util.output_file import check_output_file

        out = check_output_file("--out", args.out, lf_inputs(source, lf, recipe, Path.cwd()), args.force)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"[launch] wrote {args.out}; next: `{next_step}`")
    for name, why in notes:
        print(f"[launch] not mapped: {one_line(name)}: {why}", file=sys.stderr)
    for name, why in dropped:
        print(f"[launch] dropped (--lenient): {one_line(name)}: {why}", file=sys.stderr)
    return 0


def cmd_serve(argv: list[str]) -> int:
    import os

    parser = _parser("serve", "OpenAI-compatible HTTP API over a model (+ LoRA adapters)")
    parser.add_argument(
        "--model", required=True, help="base model: hub id, local dir (a merged model) or builtin:tiny-qwen2"
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="PEFT adapter served as model NAME (default: its folder name); repeatable",
    )
    parser.add_argument("--name", default=None, help="model id of the base in /v1/models (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted API key; repeatable; also LAUNCH_API_KEYS=k1,k2; none = no authentication",
    )
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute per API key")
    parser.add_argument("--tpm", type=int, default=None, help="prompt + completion tokens per minute per API key")
    parser.add_argument("--max-queue", type=int, default=8, help="requests waiting for the model; more get 503")
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="largest max_tokens a request may ask (the default)"
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="longest prompt a request may send, in tokens; longer ones get 400 (default: the model's context)",
    )
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="hf: this process; vllm: `vllm serve`")
    parser.add_argument("--print", action="store_true", help="with --engine vllm: print the command, run nothing")
    parser.add_argument("--trust-remote-code", action="store_true")
    _weights_arguments(parser, "auto: bf16 on a GPU, fp32 on CPU (with --engine hf)")
    args = parser.parse_args(argv)
    from launcher.infer.serve import (
        Engine,
        Limits,
        ServeError,
        parse_adapters,
        require_listenable,
        run_vllm,
        serve,
        vllm_command,
    )

    keys = args.api_key + [k for k in os.environ.get("LAUNCH_API_KEYS", "").split(",") if k]
    for flag, value in (
        ("--rpm", args.rpm),
        ("--tpm", args.tpm),
        ("--max-tokens", args.max_tokens),
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-prompt-tokens", args.max_prompt_tokens),
    ):
        if value is not None and value < 1:
            raise ServeError(f"{flag} {value}: must be >= 1")
    require_listenable(args.host, args.port)
    adapters = parse_adapters(args.adapter)
    name = args.name or args.model
    if args.engine == "vllm":
        from launcher.model.builtin import local_model_path  # vLLM reads a folder or a hub id, not builtin:

        if args.load_in:
            raise ServeError(
                f"--load-in {args.load_in} quantizes with bitsandbytes in this process (--engine hf). "
                "Fix: leave it out, or serve a quantized checkpoint with vLLM's own --quantization"
            )
        model = local_model_path(args.model)
        return run_vllm(vllm_command(model, adapters, args.host, args.port, name, args.dtype), keys, args.print)
    engine = Engine(args.model, adapters, name, args.trust_remote_code, args.dtype, args.load_in)
    limits = Limits(
        args.max_tokens,
        args.max_body_bytes,
        max(0, args.max_queue),
        args.rpm,
        args.tpm,
        engine.prompt_limit(args.max_prompt_tokens),
    )
    serve(engine, limits, set(keys), args.host, args.port)
    return 0


def cmd_ui(argv: list[str]) -> int:
    import os

    parser = _parser("ui", "a local web page: compose a recipe, plan it, start, stop and watch runs (docs/ui.md)")
    parser.add_argument("--host", default="127.0.0.1", help="any other than loopback needs --token")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--root", default=".", help="the folder of recipes/ and run outputs; nothing outside it is read"
    )
    parser.add_argument("--token", default=None, help="every request must carry it (the URL printed sets a cookie)")
    args = parser.parse_args(argv)
    from launcher.ui.server import check_arguments, make_server

    root = Path(args.root).resolve()
    check_arguments(args.host, args.port, root, args.token)
    os.chdir(root)  # a recipe's relative paths resolve here, as in the `launch` the page starts
    server = make_server(root, args.host, args.port, args.token)
    query = f"/?token={args.token}" if args.token else "/"
    print(
        f"[ui] http://{args.host}:{server.server_port}{query} (root {root}; Ctrl-C stops the page, not its runs)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_eval(argv: list[str]) -> int:
    parser = _recipe_parser("eval", "generate on the eval data; predictions + BLEU-4 / ROUGE (LLaMA-Factory's scores)")
    parser.add_argument(
        "--dataset", action="append", default=None, help="eval dataset (default: data.eval_datasets); repeatable"
    )
    parser.add_argument("--model", default=None, help="base or merged model (default: model.path)")
    parser.add_argument(
        "--adapter",
        default=None,
        help="PEFT adapter or checkpoint-<step> (default: output.dir when it holds one); '' = none",
    )
    parser.add_argument("--out", default=None, help="folder for the predictions and scores (default: output.dir/eval)")
    parser.add_argument(
        "--force", action="store_true", help="replace earlier predictions in --out (never an input of the run)"
    )
    parser.add_argument(
        "--nproc", type=int, default=None, help="processes sharing the prompts (default: the plan's per node)"
    )
    args = parser.parse_intermixed_args(argv)
    from launcher.infer.evaluate import eval_folder, evaluate

    recipe = load_recipe(args.recipe, args.overrides)
    out = eval_folder(recipe, args.recipe, args.dataset, args.out, args.force)
    nproc = args.nproc
    if nproc is None:  # eval reads only its eval datasets: no whole plan (data.datasets is not read)
        from launcher.plan.devices import detect_gpus, processes_per_node

        nproc = processes_per_node(recipe["distributed"]["nproc_per_node"], detect_gpus())
    results = evaluate(recipe, args.dataset, args.model, args.adapter, out, nproc)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


def cmd_download(argv: list[str]) -> int:
    parser = _parser("download", "fetch a model into the local hub cache, for offline runs")
    parser.add_argument("model", help="hub id (e.g. Qwen/Qwen2-7B-Instruct), or a recipe whose model.path to fetch")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: HF_HUB_CACHE, else ~/.cache/huggingface/hub)"
    )
    parser.add_argument(
        "--hub",
        default=None,
        choices=("huggingface", "modelscope"),
        help="default: the recipe's model.hub, else huggingface",
    )
    args = parser.parse_args(argv)
    from launcher.model.hub import fetch

    target, hub = args.model, args.hub
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():  # a recipe: its model.path and model.hub
        model = load_recipe(target)["model"]
        target, hub = model["path"], hub or model["hub"]
    print(fetch(target, hub, args.revision, args.cache_dir), flush=True)
    return 0


COMMANDS = {
    "train": cmd_train,
    "plan": cmd_plan,
    "sbatch": cmd_sbatch,
    "data": cmd_data,
    "schema": cmd_schema,
    "chat": cmd_chat,
    "consolidate": cmd_consolidate,
    "merge": cmd_merge,
    "expand": cmd_expand,
    "import-lf": cmd_import_lf,
    "serve": cmd_serve,
    "eval": cmd_eval,
    "predict": cmd_eval,
    "download": cmd_download,
    "ui": cmd_ui,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: launch RECIPE [k=v ...] | launch {{{','.join(COMMANDS)}}} ...\n\n{__doc__}")
        return 0 if argv else 2
    verb, rest = (argv[0], argv[1:]) if argv[0] in COMMANDS else ("train", argv)
    quiet.install()
    try:
        return COMMANDS[verb](rest)
    except LauncherError as err:  # the user's input: one line, no traceback; anything else is a bug and keeps its own
        print(f"{_prog(verb, err)}: error: {err}", file=sys.stderr)
        return err.code


def _prog(verb: str, err: LauncherError) -> str:
    """A bad recipe or dataset is named by file:line, so the line says only `launch`; an error about
    a verb's flags or files names the verb (predict is eval)."""
    if isinstance(err, (RecipeError, DataError)):
        return "launch"
    return f"launch {'eval' if verb == 'predict' else verb}"


if __name__ == "__main__":
    sys.exit(main())
