"""Evaluators, one per kind of task: how the publish step measures versions. `REGISTRY` maps the
name a format asks for (`Format.evaluator`) to the class; a new one is a module here plus its line.
"""

from __future__ import annotations

from shipyard.optimize.evaluators.base import EvalOptions, Evaluator, PassData
from shipyard.optimize.evaluators.binary import Binary
from shipyard.optimize.evaluators.classification import Classification
from shipyard.optimize.evaluators.embeddings import Embeddings
from shipyard.optimize.evaluators.language_modelling import LanguageModelling
from shipyard.optimize.evaluators.multiclass import Multiclass
from shipyard.optimize.evaluators.multilabel import Multilabel
from shipyard.optimize.evaluators.perplexity import Perplexity
from shipyard.optimize.evaluators.regression import Regression

# "classification" infers the task (shipyard.tasks); the others are one task each (--task).
REGISTRY: dict[str, type[Evaluator]] = {
    "classification": Classification,
    "perplexity": Perplexity,
    "multiclass": Multiclass,
    "binary": Binary,
    "multilabel": Multilabel,
    "regression": Regression,
    "language-modelling": LanguageModelling,
    "embeddings": Embeddings,
}

__all__ = ["REGISTRY", "EvalOptions", "Evaluator", "PassData"]
