"""Optimizing published versions: passes composed into recipes, measured, published with lineage.

    from shipyard.optimize import optimize, quantize_weights_
    result = optimize("model-repository", "digits:2", preset_name="int8-static", eval_data="zoo:digits")
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: `import shipyard.optimize` must not pull torch and onnxruntime in (the CLI imports it).
    if name in ("optimize", "run"):
        from shipyard.optimize.runner import optimize

        return optimize
    if name == "quantize_weights_":
        from shipyard.optimize.passes.weight_only import quantize_weights_

        return quantize_weights_
    if name == "search":
        from shipyard.optimize.search import search

        return search
    raise AttributeError(name)
