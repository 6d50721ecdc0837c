"""Method full: every parameter trains."""

from collections.abc import Mapping
from typing import Any

from launcher.model.shape import Shape, Tensor
from launcher.registry import MethodSpec


def split(shape: Shape, base: list[Tensor], method: Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """Nothing frozen, every base tensor trains."""
    return [], base


SPEC = MethodSpec(adapter="launcher.methods.full", split=split)
