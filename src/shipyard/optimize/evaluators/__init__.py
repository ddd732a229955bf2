"""Evaluators, one per kind of task: how the publish step measures versions. `REGISTRY` maps the
name a format asks for (`Format.evaluator`) to the class; a new one is a module here plus its line.
"""

from __future__ import annotations

from shipyard.optimize.evaluators.base import EvalOptions, Evaluator, PassData
from shipyard.optimize.evaluators.classification import Classification
from shipyard.optimize.evaluators.perplexity import Perplexity

REGISTRY: dict[str, type[Evaluator]] = {
    "classification": Classification,
    "perplexity": Perplexity,
}

__all__ = ["REGISTRY", "EvalOptions", "Evaluator", "PassData"]
