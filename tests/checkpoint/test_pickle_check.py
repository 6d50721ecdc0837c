"""The pickle check `launch` runs over a checkpoint before resuming (launcher/checkpoint/pickle_check.py),
on files torch.save writes here: what checkpoints hold passes, in torch's zip format and its legacy
one; anything naming another callable is named (module.name) and never runs; files torch.load would
read differently from the check (a tar archive, a zip with a second or doubled pickle) and a DeepSpeed
`latest` naming a folder outside the checkpoint are refused. Real checkpoints of every kind:
tests/test_checkpoint_integrity.py."""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from launcher.checkpoint.pickle_check import foreign_class, resume_pickles
from launcher.errors import CheckpointError
from tests.conftest import imported_after

pytestmark = pytest.mark.unit


class Planted:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _state() -> dict:
    """What a checkpoint's pickles hold: tensors of each dtype, a parameter, shapes, numpy's RNG state."""
    return {
        "module": OrderedDict(w=torch.ones(2, 3), h=torch.ones(3, dtype=torch.bfloat16), f=torch.ones(1).half()),
        "param": torch.nn.Parameter(torch.zeros(2)),
        "shapes": OrderedDict(w=torch.Size([2, 3])),
        "numpy": np.random.get_state(),
        "scalar": np.float64(0.5),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "step": 6,
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_what_checkpoints_hold_passes(tmp_path, zip_format):
    path = tmp_path / "state.pt"
    torch.save(_state(), path, _use_new_zipfile_serialization=zip_format)
    assert foreign_class(path) is None


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_planted_callable_is_named_and_never_runs(tmp_path, zip_format):
    path, marker = tmp_path / "state.pt", tmp_path / "pwned"
    torch.save({**_state(), "hook": Planted(marker)}, path, _use_new_zipfile_serialization=zip_format)
    assert foreign_class(path) == "posix.system"
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the oracle: torch itself runs it
    assert marker.exists()


def _rezip(source: Path, target: Path, extra: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info))
        for name, data in extra:
            new.writestr(name, data)


def test_every_pickle_in_the_archive_is_read_and_none_may_be_doubled(tmp_path):
    clean, evil = tmp_path / "clean.pt", tmp_path / "evil.pt"
    torch.save(_state(), clean)
    torch.save(Planted(tmp_path / "pwned"), evil)
    with zipfile.ZipFile(clean) as archive:
        prefix = archive.namelist()[0].split("/")[0]
    with zipfile.ZipFile(evil) as archive:
        payload = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    hidden, doubled = tmp_path / "hidden.pt", tmp_path / "doubled.pt"
    _rezip(clean, hidden, [("other/data.pkl", payload)])
    assert foreign_class(hidden) == "posix.system"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rezip(clean, doubled, [(f"{prefix}/data.pkl", payload)])
    with pytest.raises(CheckpointError, match="named twice"):
        foreign_class(doubled)


@pytest.mark.parametrize("content", ["tar", "garbage"])
def test_a_file_the_check_cannot_read_as_torch_does_is_refused(tmp_path, content):
    path = tmp_path / "state.pt"
    if content == "tar":  # torch.load still reads torch < 0.4's tar archives, members and all
        import tarfile

        (tmp_path / "pickle").write_bytes(b"x")
        with tarfile.open(path, "w") as archive:
            archive.add(tmp_path / "pickle", arcname="pickle")
    else:
        path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=f"{path} is not a torch file this launcher can check"):
        foreign_class(path)


def test_resume_pickles_are_what_the_trainer_and_deepspeed_load(tmp_path):
    checkpoint = tmp_path / "checkpoint-6"
    (checkpoint / "global_step6").mkdir(parents=True)
    loaded = ["rng_state_0.pth", "scheduler.pt", "global_step6/mp_rank_00_model_states.pt"]
    for name in [*loaded, "training_args.bin", "adapter_model.safetensors", "trainer_state.json"]:
        (checkpoint / name).write_bytes(b"")
    (checkpoint / "latest").write_text("global_step6")
    assert sorted(str(p.relative_to(checkpoint)) for p in resume_pickles(checkpoint)) == sorted(loaded)
    (checkpoint / "latest").write_text("../../elsewhere")  # DeepSpeed joins it to the checkpoint and loads there
    with pytest.raises(CheckpointError, match="not a folder of this checkpoint"):
        resume_pickles(checkpoint)


def test_the_check_imports_neither_torch_nor_what_the_pickles_name(tmp_path):
    """`launch` checks before any process starts, torch-free; nothing a pickle names is imported to check it."""
    path = tmp_path / "state.pt"
    torch.save(_state(), path)
    code = (
        "from pathlib import Path\nfrom launcher.checkpoint.resume import prepare_resume\n"
        f"from launcher.checkpoint.pickle_check import foreign_class\nassert foreign_class(Path({str(path)!r})) is None"
    )
    assert imported_after(code, ("torch", "numpy", "deepspeed", "transformers")) == []
