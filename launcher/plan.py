"""Plan: turn a resolved recipe into everything a run needs, as plain JSON.

World layout, the DeepSpeed config with every "auto" filled, environment, and the exact
argv for each node. The worker receives nothing but this plan. No torch import here:
`launch plan` must answer in well under a second and refuse bad recipes before any
process starts.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from launcher.builtin import builtin_config_path, is_builtin
from launcher.data.registry import DataError, resolve_dataset
from launcher.ds_user_config import RUNTIME_AUTO, describe, user_template
from launcher.kernels.choice import format_kernels, kernel_plan
from launcher.memory import estimate as estimate_memory
from launcher.memory import fit_refusal, format_memory, model_shape, pick_auto
from launcher.planfile import plan_copies_dir, private_dir, write_new
from launcher.preflight import check as check_preflight
from launcher.preflight import format_model_source, model_source
from launcher.recipe import RecipeError, combination_error
from launcher.schema import DEFAULT_MASTER_PORT

PLAN_VERSION = 1
DS_CONFIG_DIR = Path(__file__).resolve().parent / "ds_configs"  # package data: a wheel carries it
CPU_PROCESSES = 2  # nproc_per_node: auto without GPUs -> two gloo processes
CPU_PROCESSES_PER_CORE = 4  # more CPU processes per core than this is refused


def detect_gpus() -> dict:
    """Visible NVIDIA GPUs without importing torch: nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES.

    {"count", "names", "compute_caps" (e.g. 8.0), "memory_gb" (total per GPU)}."""
    none = {"count": 0, "names": [], "compute_caps": [], "memory_gb": []}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return none
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return none
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return none
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]
    if visible is not None:
        rows = rows[: len([v for v in visible.split(",") if v.strip()])]
    return {"count": len(rows), "names": [r[0] for r in rows],
            "compute_caps": [_number(r[1]) for r in rows], "memory_gb": [_number(r[2]) / 1024 for r in rows]}


def _number(text: str) -> float:
    """nvidia-smi prints [N/A] where a field is unknown; 0 then means unknown."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def host_memory_gb() -> float | None:
    """MemTotal of this machine (GiB) from /proc/meminfo, or None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return None


def model_hidden_size(model_path: str) -> int | None:
    """hidden_size from a builtin or local config.json, or the table of known hub models."""
    if is_builtin(model_path):
        config_file = builtin_config_path(model_path)
    else:
        config_file = Path(model_path) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    shape, _ = model_shape(model_path)  # the memory planner's table of common hub models
    return shape.hidden if shape else None


def master_port(port: int | str, nnodes: int) -> int:
    """distributed.master_port: auto is a port free now on a single node (as torchrun --standalone picks one),
    the fixed default on several nodes, which must agree on it without talking first."""
    if port != "auto":
        return port
    if nnodes > 1:
        return DEFAULT_MASTER_PORT
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _fill_auto(node, values: dict, path: str = ""):
    """Replace every "auto" in a DeepSpeed config by values[dotted path]."""
    if isinstance(node, dict):
        return {k: _fill_auto(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path in RUNTIME_AUTO:  # the Trainer fills it once it knows the number of steps
            return node
        if path not in values:
            raise KeyError(f"no value for DeepSpeed auto field {path}")
        return values[path]
    return node


def deepspeed_config(recipe: dict, world_size: int, dtype: str, on_gpu: bool) -> dict | None:
    """The resolved DeepSpeed config for the recipe, or None for plain DDP."""
    dist, train = recipe["distributed"], recipe["train"]
    if dist["engine"] != "deepspeed":
        return None
    hidden = model_hidden_size(recipe["model"]["path"])
    values = {
        "train_batch_size": train["micro_batch_size"] * train["grad_accum"] * world_size,
        "train_micro_batch_size_per_gpu": train["micro_batch_size"],
        "gradient_accumulation_steps": train["grad_accum"],
        "gradient_clipping": train["max_grad_norm"],
        "bf16.enabled": dtype == "bf16",
        "fp16.enabled": dtype == "fp16",
        # DeepSpeed's own defaults when the model's width is unknown offline
        "zero_optimization.reduce_bucket_size": hidden * hidden if hidden else 500_000_000,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else 50_000_000,
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden if hidden else 100_000,
        "optimizer.params.lr": train["lr"],
        "optimizer.params.betas": [0.9, 0.999],
        "optimizer.params.eps": 1e-8,
        "optimizer.params.weight_decay": train["weight_decay"],
        "zero_optimization.stage": dist["zero"],
        "scheduler.params.warmup_min_lr": 0,
        "scheduler.params.warmup_max_lr": train["lr"],
    }
    if dist["deepspeed_config"]:  # the user's own JSON: its explicit values checked against the recipe
        template = user_template(dist["deepspeed_config"], values)
    else:
        name = f"zero{dist['zero']}" + ("" if dist["offload"] == "none" else f"_offload_{dist['offload']}")
        template = json.loads((DS_CONFIG_DIR / f"{name}.json").read_text())
    config = _fill_auto(template, values)
    if not on_gpu:  # pinned host memory needs CUDA
        for part in ("offload_optimizer", "offload_param"):
            if part in config.get("zero_optimization", {}):
                config["zero_optimization"][part]["pin_memory"] = False
    if dtype != "fp16":
        config.pop("fp16", None)
    return config


def resolve_dtype(dtype: str, gpus: dict) -> str:
    """auto -> bf16 on GPUs that have it (Ampere+), fp16 on older ones, fp32 on CPU."""
    if dtype != "auto":
        return dtype
    if not gpus["count"]:
        return "fp32"
    return "bf16" if all(cap == 0 or cap >= 8.0 for cap in gpus["compute_caps"]) else "fp16"


def _check_device(recipe: dict, gpus: dict) -> None:
    """Refuse precisions and kernels the visible hardware cannot run."""
    dtype = recipe["model"]["dtype"]
    if gpus["count"]:
        # bf16 needs Ampere (compute capability 8.0) or newer; older GPUs emulate it or fail in kernels
        old = [f"{name} (compute {cap:.1f})" for name, cap in zip(gpus["names"], gpus["compute_caps"]) if 0 < cap < 8.0]
        if dtype == "bf16" and old:
            raise RecipeError(f"model.dtype = 'bf16' needs compute capability 8.0+ (Ampere or newer); visible: "
                              f"{', '.join(old)}. Fix: model.dtype=fp16 (loss scaling on) or fp32")
        return
    if dtype == "fp16":
        raise RecipeError("model.dtype = 'fp16' needs a CUDA GPU and none is visible. Fix: model.dtype=bf16 or fp32 on CPU")


def _kernel_plan(recipe: dict, on_gpu: bool) -> dict:
    """Attention / loss kernel and compile choice (launcher/kernels/choice.py), refusals as RecipeError."""
    shape, _ = model_shape(recipe["model"]["path"])
    try:
        return kernel_plan(recipe, on_gpu, shape.vocab if shape else None)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def torch_extensions_dir() -> str:
    """Per-interpreter cache for DeepSpeed's JIT ops: torch's default folder is shared by every
    venv, and each venv that loads the op rebuilds it there (a minute each time on CPU)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    return str(Path.home() / ".cache" / "torch_extensions" / f"launcher-{tag}")


def _environment(recipe: dict, nproc: int, on_gpu: bool) -> dict[str, str]:
    env = {
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    model = recipe["model"]["path"]
    if is_builtin(model) or Path(model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"
    if on_gpu:
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    else:
        env["DS_ACCELERATOR"] = "cpu"
        env["TORCH_EXTENSIONS_DIR"] = torch_extensions_dir()
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


def _node_argv(recipe: dict, world: dict, node_rank: int, plan_file: str) -> list[str]:
    """The command that starts every rank of one node with the chosen launcher."""
    dist = recipe["distributed"]
    worker = ["-m", "launcher.worker", "--plan", plan_file]
    common = dict(nnodes=world["nnodes"], nproc=world["nproc_per_node"], rank=node_rank,
                  addr=world["master_addr"], port=world["master_port"])
    python = sys.executable
    if dist["launcher"] == "torchrun":
        return [python, "-m", "torch.distributed.run", f"--nnodes={common['nnodes']}",
                f"--nproc-per-node={common['nproc']}", f"--node-rank={node_rank}",
                f"--master-addr={common['addr']}", f"--master-port={common['port']}",
                f"--max-restarts={dist['max_restarts']}", *worker]
    if dist["launcher"] == "accelerate":
        # --multi_gpu selects accelerate's torchrun-based launcher; on CPU the worker's
        # TrainingArguments(use_cpu=True) picks gloo (accelerate's --cpu mode wants mpirun).
        return [python, "-m", "accelerate.commands.launch", "--multi_gpu",
                f"--num_processes={world['world_size']}", f"--num_machines={common['nnodes']}",
                f"--machine_rank={node_rank}", f"--main_process_ip={common['addr']}",
                f"--main_process_port={common['port']}", f"--max_restarts={dist['max_restarts']}",
                "--mixed_precision=no", "--dynamo_backend=no", *worker]
    if common["nnodes"] > 1:
        # DeepSpeed's runner wants a hostfile for several nodes and fans out itself; with one
        # command per node (ours) its per-node launcher takes the world as base64 JSON instead,
        # as the runner's own --no_ssh mode does. Host names are only labels there.
        world_info = {f"node{k}": list(range(common["nproc"])) for k in range(common["nnodes"])}
        encoded = base64.urlsafe_b64encode(json.dumps(world_info).encode()).decode()
        return [python, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={encoded}", f"--node_rank={node_rank}",
                f"--master_addr={common['addr']}", f"--master_port={common['port']}", "--no_local_rank", "--module",
                *worker[1:]]
    # deepspeed launcher, one node; hostfile fan-out is the ssh backend's job
    return [python, "-m", "deepspeed.launcher.runner", f"--num_nodes={common['nnodes']}",
            f"--num_gpus={common['nproc']}", f"--node_rank={node_rank}", f"--master_addr={common['addr']}",
            f"--master_port={common['port']}", "--no_local_rank", "--module", *worker[1:]]


def _check_nproc(nproc: int, gpus: dict) -> None:
    """An explicit distributed.nproc_per_node must fit this node: one process per GPU; on CPU a
    few per core still plan a world size (tests, a cluster's layout), far more only time-slice."""
    if gpus["count"]:
        if nproc > gpus["count"]:
            raise RecipeError(f"distributed.nproc_per_node = {nproc}, but only {gpus['count']} GPU(s) are visible. "
                              f"Fix: distributed.nproc_per_node=auto or <= {gpus['count']}")
        return
    cores = os.cpu_count() or 1
    most = CPU_PROCESSES_PER_CORE * max(cores, CPU_PROCESSES)
    if nproc > most:
        raise RecipeError(f"distributed.nproc_per_node = {nproc}, but no GPU is visible and this machine has {cores} CPU "
                          f"core(s): that many CPU processes only time-slice, each collective waiting for the slowest. "
                          f"Fix: distributed.nproc_per_node=auto ({CPU_PROCESSES} CPU processes) or <= {most}, "
                          "or run where the GPUs are")


def _check_datasets(recipe: dict) -> None:
    """Every named dataset resolves to existing files now, not inside the ranks later."""
    data = recipe["data"]
    for key in ("datasets", "eval_datasets"):
        for name in data[key]:
            try:
                resolve_dataset(name, data["dataset_dir"])
            except DataError as err:
                raise RecipeError(f"data.{key}: {err}") from None


def _check_adapter(recipe: dict) -> None:
    """model.adapter is a saved PEFT adapter (an earlier stage's output.dir), not found only inside the ranks."""
    adapter = recipe["model"]["adapter"]
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise RecipeError(f"model.adapter = {adapter!r}: no adapter_config.json there. Fix: point it at the output.dir "
                          "of a finished LoRA run (it holds adapter_config.json + adapter_model.safetensors)")


def _check_reward_model(recipe: dict) -> None:
    """PPO's train.reward_model is a finished stage: rm run (its plan.json and saved model) on the same base."""
    where = recipe["train"].get("reward_model")
    if where is None:
        return
    folder = Path(where)
    if not folder.is_dir():
        raise RecipeError(f"train.reward_model = {where!r}: no such directory. Fix: run a stage: rm recipe first "
                          "(e.g. recipes/rm_tiny.yaml) and set train.reward_model to its output.dir")
    try:
        rm_recipe = json.loads((folder / "plan.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError):
        rm_recipe = None
    if rm_recipe is None or rm_recipe.get("stage") != "rm":
        raise RecipeError(f"train.reward_model = {where!r} is not the output.dir of a stage: rm run (no plan.json with "
                          "stage: rm). Fix: point it at a reward model run's output.dir")
    if not ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()):
        raise RecipeError(f"train.reward_model = {where!r}: the rm run saved no model there (unfinished?). "
                          "Fix: let it finish, or `launch consolidate` its last checkpoint into that folder")
    if (folder / "adapter_config.json").is_file() and rm_recipe["model"]["path"] != recipe["model"]["path"]:
        raise RecipeError(f"train.reward_model = {where!r} is an adapter over {rm_recipe['model']['path']}, but "
                          f"model.path is {recipe['model']['path']}. Fix: train the reward model on the same model.path")


def _memory_plan(recipe: dict, world: dict, gpus: dict, dtype: str) -> tuple[dict, dict]:
    """(recipe with distributed.zero: auto resolved, the memory estimate). Device memory:
    distributed.device_memory_gb, else the smallest visible GPU's (nvidia-smi), else on CPU
    the host RAM shared by the node's processes."""
    dist = recipe["distributed"]
    gpu_memory = [gb for gb in gpus["memory_gb"] if gb > 0]
    host = host_memory_gb()
    host_per_process = host / world["nproc_per_node"] if host else None
    if dist["device_memory_gb"] is not None:
        memory_gb, source = dist["device_memory_gb"], "distributed.device_memory_gb"
    elif world["device"] == "cuda":
        memory_gb, source = min(gpu_memory, default=None), "nvidia-smi memory.total"
    else:
        memory_gb, source = host_per_process, f"host RAM / {world['nproc_per_node']} processes"

    def refusal(zero: int, offload: str) -> str | None:
        return combination_error({**recipe, "distributed": {**dist, "zero": zero, "offload": offload}})

    memory = estimate_memory(recipe, world["world_size"], world["device"], dtype, memory_gb, source, refusal,
                             host_per_process if world["device"] == "cuda" else None)
    if dist["zero"] != "auto":
        return recipe, memory
    if "shape" not in memory:
        raise RecipeError(f"distributed.zero: auto needs the model's shape, and {recipe['model']['path']} has "
                          f"{memory['shape_source']}. Fix: set distributed.zero: 0-3, or model.path to a local model dir")
    if memory_gb is None:
        raise RecipeError("distributed.zero: auto needs the device memory, which could not be detected. "
                          "Fix: set distributed.device_memory_gb (GiB per device)")
    chosen = pick_auto(memory)
    if chosen is None:
        smallest = min((o for o in memory["options"] if not o["refused"]), key=lambda o: o["total_gb"])
        raise RecipeError(
            f"distributed.zero: auto: no ZeRO stage or offload fits {recipe['model']['path']} ({recipe['method']['name']}) "
            f"in {memory_gb:.1f} GiB per device; the smallest option, {smallest['label']}, needs about "
            f"{smallest['total_gb']:.1f} GiB (see `launch plan`). Fix: more devices (distributed.nproc_per_node, "
            "distributed.nnodes), a smaller train.micro_batch_size or data.cutoff_len, "
            "train.gradient_checkpointing: true, or method.name: lora / model.quantization")
    memory["auto"] = {"zero": chosen["zero"], "offload": chosen["offload"]}
    return {**recipe, "distributed": {**dist, "zero": chosen["zero"], "offload": chosen["offload"]}}, memory



def node_plan_file(output_dir: str, node_rank: int) -> str:
    """Where node K's worker reads the plan: output.dir/plan.json on node 0 (the run's record), a
    node-local path elsewhere, so nodes without a shared file system need no output dir for it and
    a shared one never sees two nodes write (or node 0's overwrite delete) the same file."""
    if node_rank == 0:
        return str(Path(output_dir) / "plan.json")
    digest = hashlib.sha1(output_dir.encode()).hexdigest()[:12]
    return str(plan_copies_dir() / digest / f"plan-node{node_rank}.json")


# Folders a recipe reads that an earlier pipeline stage writes, and their checks.
STAGE_INPUTS = (("model", "adapter", _check_adapter), ("train", "reward_model", _check_reward_model))


def _check_stage_inputs(recipe: dict, allow_pending: bool) -> list[str]:
    """Check the earlier stages' outputs the recipe names. With allow_pending (`launch plan`,
    `launch sbatch`), a folder that does not exist yet is a note, not a refusal, so a whole
    pt -> sft -> dpo pipeline plans before its first stage has run; training refuses it."""
    pending = []
    for section, key, check in STAGE_INPUTS:
        try:
            check(recipe)
        except RecipeError:
            if not allow_pending or Path(recipe[section][key]).exists():
                raise
            pending.append(f"{section}.{key} = {recipe[section][key]!r} does not exist yet: run the stage that writes it first")
    return pending


def build_plan(recipe: dict, recipe_file: str | None = None, cwd: str | None = None,
               include: str | None = None, exclude: str | None = None, allow_pending: bool = False) -> dict:
    """Resolve a validated recipe into a plan (a plain JSON-serialisable dict).

    include / exclude: comma-separated hostfile hosts to keep or drop (`--include`, `--exclude`).
    allow_pending: earlier stages' outputs may be missing (listed in plan["pending"])."""
    dist = recipe["distributed"]
    _check_datasets(recipe)
    check_preflight(recipe)  # model files, template, method modules, datasets' first rows: here, not on every rank
    pending = _check_stage_inputs(recipe, allow_pending)
    gpus = detect_gpus()
    on_gpu = gpus["count"] > 0
    _check_device(recipe, gpus)
    kernels = _kernel_plan(recipe, on_gpu)
    dtype = resolve_dtype(recipe["model"]["dtype"], gpus)
    if dist["nproc_per_node"] == "auto":
        nproc = gpus["count"] if on_gpu else CPU_PROCESSES
    else:
        nproc = dist["nproc_per_node"]
        _check_nproc(nproc, gpus)
    hosts = None
    if dist["hostfile"] is not None:
        from launcher.hostfile import hostfile_hosts

        hosts = hostfile_hosts(dist, Path(cwd or os.getcwd(), dist["hostfile"]), include, exclude)
        nproc = hosts[0].slots
    elif include or exclude:
        raise RecipeError("--include/--exclude select hostfile hosts, but distributed.hostfile is not set. "
                          "Fix: set distributed.hostfile, or drop the option")
    nnodes = dist["nnodes"] if dist["nnodes"] is not None else len(hosts)  # None: the hostfile's hosts
    recipe = {**recipe, "distributed": {**dist, "nnodes": nnodes}}
    master_addr = dist["master_addr"] or (hosts[0].name if hosts else None)
    if nnodes > 1 and master_addr is None:
        raise RecipeError(f"distributed.nnodes = {nnodes} needs distributed.master_addr (the address of node 0), "
                          "a distributed.hostfile, or a SLURM allocation. Fix: set distributed.master_addr: <node-0 address>")
    world = {
        "nnodes": nnodes,
        "nproc_per_node": nproc,
        "world_size": nnodes * nproc,
        "device": "cuda" if on_gpu else "cpu",
        "backend": "nccl" if on_gpu else "gloo",
        "gpus": gpus["names"],
        "master_addr": master_addr or "127.0.0.1",
        "master_port": master_port(dist["master_port"], nnodes),
    }
    recipe, memory = _memory_plan(recipe, world, gpus, dtype)
    # training refuses a plan that does not fit; `launch plan` prints why and exits 0 (a plan
    # made on another machine than the cluster's)
    memory["refusal"] = fit_refusal(memory, recipe)
    output_dir = str(Path(cwd or os.getcwd(), recipe["output"]["dir"]).resolve())
    plan_file = str(Path(output_dir) / "plan.json")
    train = recipe["train"]
    return {
        "version": PLAN_VERSION,
        "recipe_file": recipe_file,
        "pending": pending,
        "recipe": copy.deepcopy(recipe),
        "model": model_source(recipe),
        "world": world,
        "dtype": dtype,
        "batch": {
            "micro_batch_size": train["micro_batch_size"],
            "grad_accum": train["grad_accum"],
            "global_batch_size": train["micro_batch_size"] * train["grad_accum"] * world["world_size"],
        },
        "deepspeed": deepspeed_config(recipe, world["world_size"], dtype, on_gpu),
        "memory": memory,
        "kernels": kernels,
        "env": _environment(recipe, nproc, on_gpu),
        "output_dir": output_dir,
        "plan_file": plan_file,
        "nodes": [{"node_rank": k, "host": hosts[k].name if hosts else None, "plan_file": node_plan_file(output_dir, k),
                   "argv": _node_argv(recipe, world, k, node_plan_file(output_dir, k))} for k in range(nnodes)],
    }


def format_plan(plan: dict) -> str:
    """Human-readable plan: recipe, world, DeepSpeed config, environment, command per node."""
    import yaml

    world = plan["world"]
    lines = ["# recipe (resolved)", yaml.safe_dump(plan["recipe"], sort_keys=False).rstrip(), "",
             "# world",
             f"nodes: {world['nnodes']} x {world['nproc_per_node']} processes = world size {world['world_size']} "
             f"on {world['device']} ({world['backend']})" + (f": {', '.join(world['gpus'])}" if world["gpus"] else ""),
             f"rendezvous: {world['master_addr']}:{world['master_port']}",
             f"precision: {plan['dtype']}",
             f"batch: micro {plan['batch']['micro_batch_size']} x grad_accum {plan['batch']['grad_accum']} "
             f"x world {world['world_size']} = global {plan['batch']['global_batch_size']}",
             f"output: {plan['output_dir']}", format_model_source(plan["model"]), "",
             describe(plan) if plan["deepspeed"] else "# deepspeed: off (plain DDP)"]
    if plan["deepspeed"]:
        lines.append(json.dumps(plan["deepspeed"], indent=2))
    dist = plan["recipe"]["distributed"]
    lines += ["", "# kernels"] + format_kernels(plan["kernels"])
    lines += [""] + format_memory(plan["memory"], (dist["zero"], dist["offload"]))
    if "auto" in plan["memory"]:
        lines.append("distributed.zero: auto chose the first option that fits, in the order listed")
    if plan["memory"].get("refusal"):
        lines.append(f"training refuses this plan: {plan['memory']['refusal']}")
    if plan.get("pending"):
        lines += ["", "# not there yet (training refuses until they are)"] + plan["pending"]
    lines += ["", "# environment"] + [f"{k}={shlex.quote(v)}" for k, v in plan["env"].items()]
    lines += ["", "# command per node"]
    for node in plan["nodes"]:
        host = f" on {node['host']}" + (" (this machine, the others over ssh)" if node["node_rank"] == 0 else " (ssh)") \
            if node.get("host") else ""
        lines.append(f"node {node['node_rank']}{host}: {shlex.join(node['argv'])}")
    return "\n".join(lines)


def write_plan(plan: dict, path: str | None = None) -> str:
    """Write the plan atomically (default: output.dir/plan.json), never through a link; a node's
    own copy (any other path) goes into folders private to this user. Returns its path."""
    path = Path(path or plan["plan_file"])
    if str(path) == plan["plan_file"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new(path, json.dumps(plan, indent=2) + "\n")
    else:
        private_dir(path.parent.parent)
        private_dir(path.parent)
        write_new(path, json.dumps(plan, indent=2) + "\n", mode=0o600)
    return str(path)
