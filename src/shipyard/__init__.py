"""shipyard: turn a trained model into a fast, compact, versioned service."""

__version__ = "0.1.0"
