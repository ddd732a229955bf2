"""Compression and conversion passes. One file per pass; importing this package registers them all.

`REGISTRY` maps each config type to its handler; `BY_NAME` maps the name a recipe file uses. A new
pass is a module here plus its line below.
"""

from shipyard.optimize.passes import (  # noqa: F401 - imported for their @register side effect
    clip,
    distill,
    export,
    lowrank,
    prune_structured,
    prune_unstructured,
    quantize,
    tflite,
    weight_only,
)
from shipyard.optimize.passes.base import BY_NAME, REGISTRY, Context, PassConfig, accepts, apply, kinds, register

__all__ = ["BY_NAME", "REGISTRY", "Context", "PassConfig", "accepts", "apply", "kinds", "register"]
