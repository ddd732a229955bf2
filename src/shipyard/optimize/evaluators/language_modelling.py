"""The evaluator of the language-modelling task ([B, T, V] logits of a tensor LM: next-token accuracy, NLL, perplexity)."""

from __future__ import annotations

from shipyard.optimize.evaluators.classification import Classification


class LanguageModelling(Classification):
    fixed = "language-modelling"
