"""The evaluator of the binary task (one sigmoid unit (or its logit): accuracy at 0.5, AUC, binary cross-entropy)."""

from __future__ import annotations

from shipyard.optimize.evaluators.classification import Classification


class Binary(Classification):
    fixed = "binary"
