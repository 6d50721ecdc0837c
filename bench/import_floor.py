"""The start-up floor of any torchrun-launched trainer on this stack: each rank imports what a LoRA ZeRO-3 run needs
(torch, transformers' Trainer and model class, peft, DeepSpeed; not the optional libraries a lean rank
hides: worker/lean_imports.py) and exits. bench/startup.py times it beside launch."""

import os
import sys
import time

start = time.perf_counter()
for unused in ("bitsandbytes", "datasets", "mlflow", "wandb", "swanlab"):  # as a lean rank hides them
    sys.modules[unused] = None  # type: ignore[assignment]
import deepspeed  # noqa: E402, F401
import peft  # noqa: E402, F401
from transformers import Qwen2ForCausalLM, Trainer  # noqa: E402, F401

if os.environ.get("RANK", "0") == "0":
    print(f"[floor] imported in {time.perf_counter() - start:.2f} s", flush=True)
