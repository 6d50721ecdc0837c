"""Embedded models: ``builtin:<name>`` model paths that need no network and no hub.

``builtin:tiny-qwen2`` is a Qwen2-architecture causal LM (4 layers, hidden size 128,
~1.3M parameters) with a 2048-token byte-level BPE tokenizer and a ChatML chat template.
Only the config, generation config and tokenizer files are committed (``tiny_qwen2/``);
the weights are made on demand by :func:`materialize`, deterministically from a fixed seed,
and cached. Its ``initializer_range`` is 0.1 rather than the usual 0.02: at width 128 a
0.02 output head caps logits near +-2.5, so a LoRA-only demo could barely move the output
distribution; at 0.1 the demo's loss visibly falls.

Import cost: this module imports only the standard library. torch and transformers are
imported inside :func:`materialize` when a model has to be built, so the torch-free
planner can call :func:`is_builtin` and :func:`builtin_config_path`.

Cache layout::

    $LAUNCHER_CACHE/builtin/<name>-<fingerprint>/      (if LAUNCHER_CACHE is set)
    ~/.cache/llm-launcher/builtin/<name>-<fingerprint>/ (otherwise)

``<fingerprint>`` is the first 12 hex digits of a SHA-256 over :data:`BUILD_VERSION`, the
seed, the model name and the bytes of every committed file of the model, so editing the
config or the tokenizer (or bumping BUILD_VERSION when the build code changes) selects a
new folder instead of reusing stale weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_MODELS",
    "BUILD_VERSION",
    "SEED",
    "is_builtin",
    "builtin_name",
    "builtin_source_dir",
    "builtin_config_path",
    "fingerprint",
    "builtin_cache_dir",
    "materialize",
    "local_model_path",
]

BUILTIN_PREFIX = "builtin:"

_PACKAGE_DIR = Path(__file__).resolve().parent

#: builtin name -> folder (inside this package) holding its committed files
BUILTIN_MODELS: dict[str, str] = {
    "tiny-qwen2": "tiny_qwen2",
}

#: Bump when the build code changes what :func:`materialize` writes (invalidates caches).
BUILD_VERSION = 1

#: torch seed used to initialise builtin weights.
SEED = 20240607

#: Committed files that define a builtin model (all enter the fingerprint).
_SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: Files whose presence marks a materialized folder as complete.
_REQUIRED_OUTPUTS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_MARKER = "builtin.json"
# Seeding torch is process-global: serialize builds between threads of one process.
_BUILD_LOCK = threading.Lock()


def is_builtin(path: str) -> bool:
    """True when ``path`` names an embedded model (``builtin:...``), known or not."""
    return isinstance(path, str) and path.startswith(BUILTIN_PREFIX)


def builtin_name(path: str) -> str:
    """``"builtin:tiny-qwen2"`` -> ``"tiny-qwen2"``; ValueError for anything else."""
    if not is_builtin(path):
        raise ValueError(f"{path!r} is not a builtin model path (expected {BUILTIN_PREFIX}<name>)")
    name = path[len(BUILTIN_PREFIX) :]
    if name not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_MODELS))
        raise ValueError(f"unknown builtin model {path!r}; known builtin models: {known}")
    return name


def builtin_source_dir(path: str) -> Path:
    """The committed folder of a builtin model (config + tokenizer, no weights)."""
    return _PACKAGE_DIR / BUILTIN_MODELS[builtin_name(path)]


def builtin_config_path(path: str) -> Path:
    """The committed ``config.json`` of a builtin model. Imports nothing heavy."""
    return builtin_source_dir(path) / "config.json"


def fingerprint(path: str) -> str:
    """Short content hash of everything that determines the materialized folder."""
    name = builtin_name(path)
    src = builtin_source_dir(path)
    digest = hashlib.sha256()
    digest.update(f"build={BUILD_VERSION};seed={SEED};name={name}\n".encode())
    for filename in _SOURCE_FILES:
        data = (src / filename).read_bytes()
        digest.update(f"{filename}:{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def builtin_cache_dir() -> Path:
    """``$LAUNCHER_CACHE/builtin`` if LAUNCHER_CACHE is set, else ``~/.cache/llm-launcher/builtin``."""
    root = os.environ.get("LAUNCHER_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "llm-launcher"
    return base / "builtin"


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in _REQUIRED_OUTPUTS)


def materialize(path: str, cache_dir: str | None = None) -> str:
    """Return a local folder for a builtin model that ``AutoModelForCausalLM.from_pretrained``
    and ``AutoTokenizer.from_pretrained`` load offline, building it on first use.

    ``cache_dir`` is the folder that holds the ``<name>-<fingerprint>`` folders (default:
    :func:`builtin_cache_dir`). Safe to call from several processes at once: each builds
    into its own temporary sibling folder and renames it into place; a process that loses
    the race discards its copy and uses the winner's (the weights are identical anyway).
    The caller's torch RNG state is left untouched.
    """
    name = builtin_name(path)  # ValueError for unknown names, before anything is imported
    root = Path(cache_dir).expanduser() if cache_dir is not None else builtin_cache_dir()
    target = root / f"{name}-{fingerprint(path)}"
    if _is_complete(target):
        return str(target)
    if target.exists():
        raise RuntimeError(
            f"{target} exists but is incomplete (missing one of {', '.join(_REQUIRED_OUTPUTS)}); "
            "delete it and try again"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        with _BUILD_LOCK:
            _build(path, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process renamed its copy into place first.
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _build(path: str, out: Path) -> None:
    """Write weights, configs and tokenizer files of a builtin model into ``out``."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    src = builtin_source_dir(path)
    config = AutoConfig.from_pretrained(src)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(src)
    model.save_pretrained(out)
    for filename in _TOKENIZER_FILES:
        shutil.copyfile(src / filename, out / filename)
    marker = {
        "path": path,
        "fingerprint": fingerprint(path),
        "build_version": BUILD_VERSION,
        "seed": SEED,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def local_model_path(path: str) -> str:
    """``builtin:<name>`` -> its materialized folder; a hub id or local folder passes through."""
    return materialize(path) if is_builtin(path) else path
