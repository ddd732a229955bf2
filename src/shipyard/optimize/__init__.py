"""Compression and conversion passes, recipes, evaluation and reports."""
