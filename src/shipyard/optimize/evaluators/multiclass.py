"""The evaluator of the multiclass task (logits or probabilities: top-1 (and top-5) accuracy, cross-entropy)."""

from __future__ import annotations

from shipyard.optimize.evaluators.classification import Classification


class Multiclass(Classification):
    fixed = "multiclass"
