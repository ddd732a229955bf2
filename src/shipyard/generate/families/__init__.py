"""The model families `shipyard.generate` drives, one module each, found by config.json `model_type`.

`FAMILIES` is the one table: `shipyard.runtimes.hf_causal` checks folders against it when a model
is imported, and loads the family from it. It names modules rather than importing them, so reading
it loads no torch (a family module does). What a family module provides: see `base.Family`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shipyard.errors import InvalidInput

if TYPE_CHECKING:
    from shipyard.generate.families.base import Family

# config.json model_type -> the module in this package that drives it (it defines FAMILY)
FAMILIES: dict[str, str] = {
    "gpt2": "gpt2",
    "llama": "llama",
}


def supported() -> str:
    """The families there are, for messages: 'gpt2, llama'."""
    return ", ".join(sorted(set(FAMILIES.values())))


def family_for(model_type: str) -> Family:
    """The family that drives a config.json `model_type`; InvalidInput if none does."""
    module = FAMILIES.get(model_type)
    if module is None:
        raise InvalidInput(f"model_type '{model_type}' is not one shipyard.generate drives; supported: {supported()}")
    family: Family = importlib.import_module(f"{__name__}.{module}").FAMILY
    return family
