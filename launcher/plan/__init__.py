"""Plan: turn a resolved recipe into everything a run needs, as plain JSON.

World layout, the DeepSpeed config with every "auto" filled, environment, and the exact
argv for each node. The worker receives nothing but this plan. No torch import here:
`launch plan` must answer in well under a second and refuse bad recipes before any
process starts.

One module per concern; build.py coordinates them: devices (GPUs, host memory, processes per
node), precision (dtype and kernels the hardware runs), deepspeed (config templating), env,
argv (rendezvous port, launcher command per node), inputs (datasets and earlier stages'
outputs), memory_fit (distributed.zero: auto), files (plan.json per node), format (`launch plan`).
"""

from launcher.engines.deepspeed_config import DS_CONFIG_DIR, deepspeed_config, model_hidden_size
from launcher.plan.argv import master_port
from launcher.plan.build import build_plan
from launcher.plan.devices import CPU_PROCESSES, CPU_PROCESSES_PER_CORE, detect_gpus, host_memory_gb
from launcher.plan.env import torch_extensions_dir
from launcher.plan.files import PLAN_VERSION, node_plan_file, read_plan, write_plan
from launcher.plan.format import format_plan
from launcher.plan.inputs import STAGE_INPUTS
from launcher.plan.precision import resolve_dtype

__all__ = [
    "CPU_PROCESSES",
    "CPU_PROCESSES_PER_CORE",
    "DS_CONFIG_DIR",
    "PLAN_VERSION",
    "STAGE_INPUTS",
    "build_plan",
    "deepspeed_config",
    "detect_gpus",
    "format_plan",
    "host_memory_gb",
    "master_port",
    "model_hidden_size",
    "node_plan_file",
    "read_plan",
    "resolve_dtype",
    "torch_extensions_dir",
    "write_plan",
]
