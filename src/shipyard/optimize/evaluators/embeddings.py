"""The evaluator of the embeddings task (vectors: cosine with the targets; agreement: cosine at or above a threshold; loss 1 - cosine)."""

from __future__ import annotations

from shipyard.optimize.evaluators.classification import Classification


class Embeddings(Classification):
    fixed = "embeddings"
