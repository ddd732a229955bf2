"""The evaluator of the multilabel task (one sigmoid per label: per-label accuracy and F1, binary cross-entropy per label)."""

from __future__ import annotations

from shipyard.optimize.evaluators.classification import Classification


class Multilabel(Classification):
    fixed = "multilabel"
