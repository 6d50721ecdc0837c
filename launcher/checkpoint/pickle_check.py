"""What a checkpoint's pickles may name, read before a resume hands them to torch. Torch-free.

Resuming unpickles DeepSpeed's *_model_states.pt / *_optim_states.pt with
torch.load(weights_only=False) on every rank, and unpickling calls whatever a pickle names. The
manifest only says the files are the ones a save wrote (or someone rewrote it too), so `launch`
reads every pickle resume will load with an unpickler whose `find_class` knows only `ALLOWED`: the
classes this launcher's checkpoints really hold (found by saving ZeRO-0/1/2/3, offload, LoRA, full
and DDP checkpoints). Every allowed name unpickles to an inert stand-in and tensor data is never
read (storages are persistent ids), so the check itself runs nothing a file names.
"""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from pathlib import Path

from launcher.errors import CheckpointError

_STORAGES = ("Float", "BFloat16", "Half", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool")

# module.name -> why a checkpoint holds it. Calling any of these with pickled arguments runs no user code.
ALLOWED: dict[str, str] = {
    # a tensor is a call of a rebuild function on a storage (a persistent id) with its size and strides
    "torch._utils._rebuild_tensor_v2": "every tensor (model weights, optimizer moments, RNG states)",
    "torch._utils._rebuild_tensor_v3": "a tensor whose dtype has no typed storage",
    "torch._utils._rebuild_parameter": "an nn.Parameter saved as such",
    "torch._utils._rebuild_parameter_with_state": "an nn.Parameter with attributes",
    "torch._tensor._rebuild_from_type_v2": "a tensor with attributes (DeepSpeed's flat fp32 partitions)",
    "torch.Tensor": "the type _rebuild_from_type_v2 rebuilds",
    "torch.nn.parameter.Parameter": "the type _rebuild_from_type_v2 rebuilds for a parameter",
    "torch.Size": "DeepSpeed's param_shapes",
    "torch.device": "a device recorded in optimizer state",
    "torch.float32": "a dtype recorded in state (fp32 runs)",
    "torch.bfloat16": "a dtype recorded in state (bf16 runs)",
    "torch.float16": "DeepSpeed's DynamicLossScaler.dtype (fp16 runs)",
    # the storage type inside each tensor's persistent id, one per dtype a run trains or keeps counters in
    **{f"torch.{kind}Storage": "the storage class named in a tensor's persistent id" for kind in _STORAGES},
    "collections.OrderedDict": "state dicts, param_shapes",
    "_codecs.encode": "bytes under pickle protocol 2 (numpy's RNG state)",
    # numpy's RNG state in the Trainer's rng_state_<rank>.pth: an array of uint32 (numpy 2 and 1 names)
    "numpy._core.multiarray._reconstruct": "a numpy array (numpy 2)",
    "numpy.core.multiarray._reconstruct": "a numpy array (numpy 1)",
    "numpy._core.multiarray.scalar": "a numpy scalar (numpy 2)",
    "numpy.core.multiarray.scalar": "a numpy scalar (numpy 1)",
    "numpy.ndarray": "the array type _reconstruct builds",
    "numpy.dtype": "the array's dtype",
    # DeepSpeed's ZeRO optimizer state (stage_1_and_2.py, stage3.py, bf16_optimizer.py state_dict)
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": "the static loss scaler (fp32, bf16)",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": "the dynamic loss scaler (fp16)",
    "deepspeed.runtime.zero.config.ZeroStageEnum": "the ZeRO stage that wrote the state",
    "deepspeed.utils.tensor_fragment.fragment_address": "param_slice_mappings: where a parameter lies in a partition",
}

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")  # what DeepSpeed and the Trainer torch.load from a checkpoint
# training_args.bin: a pickled TrainingArguments the Trainer writes into every checkpoint but never loads
NEVER_LOADED = ("training_args.bin",)
ZIP_MAGIC = b"PK\x03\x04"  # torch.load takes a file starting with it for its zip format (serialization._is_zipfile)
LEGACY_PICKLES = 5  # the legacy format: magic number, protocol, sys_info, the object, its storage keys


class ForeignClass(Exception):
    """A pickle names something outside ALLOWED."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _Inert:
    """What every allowed name unpickles to: takes any arguments, state and items, and does nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if f"{module}.{name}" not in ALLOWED:
            raise ForeignClass(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid):
        return _Inert()  # a storage: its data is never read


# what reading a file that is no well-formed pickle can raise: the file's fault, named as unreadable
_UNREADABLE = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    RecursionError,
    OSError,
)


def _scan_zip(path: Path) -> None:
    """torch's zip format: the pickle is <archive>/data.pkl; every .pkl in the archive is read."""
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(".pkl")]
        if not names or len(set(names)) != len(names):  # duplicates: zip readers may disagree on which one loads
            raise pickle.UnpicklingError("no .pkl entry, or one named twice (torch writes one data.pkl)")
        for name in names:
            with archive.open(name) as stream:
                _AllowListUnpickler(stream, encoding="utf-8").load()


def _scan_legacy(path: Path) -> None:
    if tarfile.is_tarfile(path):  # torch < 0.4's tar format, which torch.load still tries first
        raise pickle.UnpicklingError("a tar archive (torch < 0.4's format), which no checkpoint of today holds")
    with open(path, "rb") as stream:
        for _ in range(LEGACY_PICKLES):
            if not stream.peek(1):
                return
            _AllowListUnpickler(stream, encoding="utf-8").load()


def foreign_class(path: Path) -> str | None:
    """The first name `path`'s pickles hold outside ALLOWED (module.name), or None.

    CheckpointError: the file is neither a torch zip archive nor a pickle stream."""
    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        _scan_zip(path) if is_zip else _scan_legacy(path)
    except ForeignClass as found:
        return found.name
    except _UNREADABLE as err:
        raise CheckpointError(
            f"{path} is not a torch file this launcher can check ({type(err).__name__}: {err})"
        ) from None
    return None


def deepspeed_tag(checkpoint: Path) -> str | None:
    """The folder DeepSpeed loads (its `latest` file), refused unless it is a plain folder name inside the checkpoint."""
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text(errors="replace").strip()
    if not tag or Path(tag).name != tag or tag in (".", ".."):
        raise CheckpointError(
            f"{latest} names {tag!r}, not a folder of this checkpoint: DeepSpeed would load its state from there"
        )
    return tag


def resume_pickles(checkpoint: Path) -> list[Path]:
    """Every file of `checkpoint` a resume may torch.load: the Trainer's (top level) and DeepSpeed's (one level down)."""
    deepspeed_tag(checkpoint)
    folders = [checkpoint, *sorted(path for path in checkpoint.iterdir() if path.is_dir())]
    return [
        path
        for folder in folders
        for path in sorted(folder.iterdir())
        if path.suffix in PICKLE_SUFFIXES and path.name not in NEVER_LOADED and path.is_file()
    ]
