"""Method full: every parameter trains."""

from launcher.registry import MethodSpec

SPEC = MethodSpec(adapter="launcher.methods.full")
