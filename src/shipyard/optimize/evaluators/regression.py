"""The evaluator of the regression task (MSE, MAE, R²; agreement: relative error within a tolerance of the parent)."""

from __future__ import annotations

from shipyard.optimize.evaluators.classification import Classification


class Regression(Classification):
    fixed = "regression"
