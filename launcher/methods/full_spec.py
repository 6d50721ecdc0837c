"""Method full: every parameter trains."""

from launcher.model.shape import Shape, Tensor
from launcher.registry import MethodSpec


def split(shape: Shape, base: list[Tensor], method: dict) -> tuple[list[Tensor], list[Tensor]]:
    """Nothing frozen, every base tensor trains."""
    return [], base


SPEC = MethodSpec(adapter="launcher.methods.full", split=split)
