"""Where a model's files are: what a model folder must hold, the local hub cache, and downloads.

Torch-free. huggingface_hub is imported only when a recipe names a hub id (its cache lookup costs
a few tenths of a second), ModelScope only with `model.hub: modelscope`. preflight.py calls this
before any process starts; `launch download` fetches a model for later offline runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
from pathlib import Path

from launcher.errors import RecipeError

HUBS = ("huggingface", "modelscope")
# any one of these is a tokenizer AutoTokenizer can load (fast, sentencepiece, BPE vocab, WordPiece, tiktoken)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "*.tiktoken")
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# formats no rank reads (TensorFlow, Flax, ONNX, GGUF, the original checkpoints some repos carry beside the HF ones)
DOWNLOAD_IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "*.gguf", "*.tflite", "original/*", "*.pth"]
PYTORCH_BIN_WEIGHTS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def download_ignore(repo_files: list[str]) -> list[str]:
    """What a download skips of a repo with these files: DOWNLOAD_IGNORE, and the PyTorch .bin weights where
    safetensors ones stand beside them (transformers loads those; many repos carry both, twice the bytes)."""
    if any(name.endswith(".safetensors") for name in repo_files):
        return [*DOWNLOAD_IGNORE, *PYTORCH_BIN_WEIGHTS]
    return DOWNLOAD_IGNORE


def missing_files(folder: Path) -> list[str]:
    """What a model folder lacks to be loaded by a rank (config, weights, tokenizer), [] when complete.
    Weights named by an index must all be there: an interrupted download leaves the index and some shards."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                missing.append(f"a readable {index}")
                continue
            missing += [f"{shard} (named by {index})" for shard in shards if not (folder / shard).is_file()]
            break
    else:
        if not any(p.is_file() for pattern in WEIGHT_FILES for p in folder.glob(pattern)):
            missing.append("weights (" + " or ".join(WEIGHT_FILES) + ")")
    if not any(p.is_file() for pattern in TOKENIZER_FILES for p in folder.glob(pattern)):
        missing.append("a tokenizer (one of " + ", ".join(TOKENIZER_FILES) + ")")
    return missing


def download_command(model: str, hub: str = "huggingface", revision: str | None = None) -> str:
    """The `launch download` line that fetches this model."""
    words = ["launch", "download", model] + (["--hub", hub] if hub != "huggingface" else [])
    return shlex.join(words + (["--revision", revision] if revision else []))


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hf_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing may be fetched."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def hf_cached(model_id: str, revision: str | None = None, cache_dir: str | None = None) -> Path | None:
    """The snapshot folder of a hub id in the local cache (huggingface_hub's own lookup: refs/<revision>
    -> snapshots/<commit>), None when it is not there. No network."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        config = try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir, revision=revision)
    except HFValidationError as err:
        raise RecipeError(
            f"model.path = {model_id!r} is neither a local folder nor a hub id ({err}). Fix: point it "
            "at a model folder, or a hub id such as Qwen/Qwen2-0.5B"
        ) from None
    if isinstance(config, str):
        return Path(config).parent
    snapshots = Path(cache_dir or hf_cache_dir()) / ("models--" + model_id.replace("/", "--")) / "snapshots"
    # a snapshot without its config.json: report what it lacks rather than "not cached"
    ref = Path(snapshots.parent, "refs", revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else None
    return snapshots / commit if commit and (snapshots / commit).is_dir() else None


def modelscope_missing(hub_key: str) -> str | None:
    """The refusal when ModelScope is asked for but its package is not installed."""
    if importlib.util.find_spec("modelscope") is not None:
        return None
    return (
        f"{hub_key} = 'modelscope' needs the modelscope package, which is not installed. "
        "Fix: pip install modelscope, or use the Hugging Face hub (model.hub: huggingface)"
    )


def _fill_timeouts(request) -> None:
    """A request hook: the connect/read/write/pool limits a request left unset become HF_HUB_DOWNLOAD_TIMEOUT."""
    from huggingface_hub import constants

    limits = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {
        kind: constants.HF_HUB_DOWNLOAD_TIMEOUT if limits.get(kind) is None else limits[kind]
        for kind in ("connect", "read", "write", "pool")
    }


def bound_hub_requests() -> None:
    """Every request of huggingface_hub's shared HTTP session gives up after HF_HUB_DOWNLOAD_TIMEOUT seconds
    without a connection or data. huggingface_hub sends its listing and repo-info requests with no timeout at
    all, so a hub that accepts and never answers (a dead proxy, a firewall that drops) hung `launch download`
    forever. With the hub's 5 retries a dead hub fails in about 6 x the timeout + 23 s of backoff."""
    from huggingface_hub import get_session

    hooks = get_session().event_hooks
    if _fill_timeouts not in hooks["request"]:
        get_session().event_hooks = {**hooks, "request": [*hooks["request"], _fill_timeouts]}


def unreachable_hub(model: str, hub: str, revision: str | None, err: Exception) -> str:
    """The refusal for a hub that refused the connection, did not resolve, or did not answer in time."""
    from huggingface_hub import constants

    return (
        f"{model!r} could not be fetched: the hub {constants.ENDPOINT} cannot be reached ({type(err).__name__}: "
        f"{err or 'no answer'}). Fix: check the network, a proxy (HTTPS_PROXY) or HF_ENDPOINT; a slow link: raise "
        f"HF_HUB_DOWNLOAD_TIMEOUT (now {constants.HF_HUB_DOWNLOAD_TIMEOUT} s); then run "
        f"`{download_command(model, hub, revision)}`"
    )


def download(
    model: str,
    hub: str = "huggingface",
    revision: str | None = None,
    cache_dir: str | None = None,
    local_only: bool = False,
) -> Path:
    """Fetch a model's files into the hub's cache (a progress bar per file) and return its folder.
    A hub that cannot be reached, an unknown or gated repo: RecipeError naming it and the fix."""
    if hub == "modelscope":
        refusal = modelscope_missing("--hub / model.hub")
        if refusal:
            raise RecipeError(refusal)
        from modelscope import snapshot_download as modelscope_download

        try:
            return Path(
                modelscope_download(
                    model,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_only,
                    ignore_patterns=DOWNLOAD_IGNORE,
                )
            )
        except Exception as err:  # modelscope raises plain exceptions of many kinds for network and repo errors
            raise RecipeError(
                f"ModelScope could not fetch {model!r}: {err}. Fix: check the model id and the "
                f"network, then run `{download_command(model, hub, revision)}`"
            ) from None
    from httpx2 import TransportError  # huggingface_hub's HTTP client: refused, DNS, timeouts
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    bound_hub_requests()
    try:
        files = HfApi().list_repo_files(model, revision=revision)
        return Path(
            snapshot_download(
                model,
                revision=revision,
                cache_dir=cache_dir,
                ignore_patterns=download_ignore(files),
                etag_timeout=constants.HF_HUB_ETAG_TIMEOUT,
            )
        )
    except TransportError as err:
        raise RecipeError(unreachable_hub(model, hub, revision, err)) from None
    except GatedRepoError:
        why = "is gated: accept its licence on huggingface.co and log in (`hf auth login`), then run"
    except RevisionNotFoundError:
        why = f"has no revision {revision!r} on the hub; pick a branch, tag or commit it has and run"
    except RepositoryNotFoundError:
        why = "was not found on the hub (a typo, or a private repo: log in with `hf auth login`); then run"
    except LocalEntryNotFoundError:  # no connection and nothing cached
        why = "could not be fetched: the hub cannot be reached from here. Where there is network, run"
    except (HfHubHTTPError, OSError) as err:
        why = f"could not be fetched ({type(err).__name__}: {err}); retry with"
    raise RecipeError(f"{model!r} {why} `{download_command(model, hub, revision)}`")


def fetch(target: str, hub: str | None, revision: str | None, cache_dir: str | None) -> str:
    """`launch download TARGET`: TARGET is a hub id or a local folder (the CLI reads a recipe's model.path and
    model.hub). Refusals (bad arguments, offline, no modelscope package) come before any network use. Returns
    what to print."""
    from launcher.model.builtin import is_builtin

    hub = hub or "huggingface"
    if is_builtin(target):
        return f"[launch] {target} is embedded in the launcher: nothing to download"
    if Path(target).expanduser().is_dir():
        return f"[launch] {target} is a local folder: nothing to download"
    if target.startswith(("/", ".", "~")) or target.count("/") > 1:
        raise RecipeError(
            f"launch download {target!r}: no such folder, and no hub id (org/name). Fix: name a hub id "
            "such as Qwen/Qwen2-0.5B, or a recipe file"
        )
    if revision is not None and not revision.strip():
        raise RecipeError(
            "launch download --revision '': empty. Fix: a branch, tag or commit, or leave --revision out (main)"
        )
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise RecipeError(f"launch download --cache-dir {cache_dir!r} is a file, not a folder. Fix: name a folder")
    if hub == "huggingface":
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(target)
        except HFValidationError as err:
            raise RecipeError(
                f"launch download {target!r}: not a hub id ({err}). Fix: org/name, e.g. Qwen/Qwen2-0.5B"
            ) from None
        if hf_offline():
            raise RecipeError(
                f"launch download {target}: HF_HUB_OFFLINE is set, so nothing may be fetched. Fix: run it "
                f"where there is network with HF_HUB_OFFLINE unset (`env -u HF_HUB_OFFLINE "
                f"{download_command(target, hub, revision)}`)"
            )
    folder = download(target, hub, revision, cache_dir)
    missing = missing_files(folder)
    note = f"; it lacks {', '.join(missing)}, so a run cannot load it" if missing else ""
    where = f"; runs find it with HF_HUB_CACHE={shlex.quote(cache_dir)}" if cache_dir and hub == "huggingface" else ""
    return f"[launch] {target} is in {folder}{note}{where}"


def _hub_cache_folder(model_id: str) -> Path:
    """Where huggingface_hub keeps a downloaded model (its cache layout: models--org--name)."""
    hub = (
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    return Path(hub) / ("models--" + model_id.replace("/", "--"))


def model_folder(path: str) -> Path:
    """The folder model.path is read from: a builtin's materialized folder, a local folder, or the hub cache."""
    from launcher.model.builtin import builtin_cache_dir, builtin_name, fingerprint, is_builtin

    if is_builtin(path):
        try:
            return builtin_cache_dir() / f"{builtin_name(path)}-{fingerprint(path)}"
        except ValueError:  # an unknown builtin name: reported by whatever loads the model
            return Path(path)
    return Path(path) if Path(path).exists() else _hub_cache_folder(path)
