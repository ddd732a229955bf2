"""Objects a training config names as 'package.module:attr' (a task factory, a step callback), so
a run launched from YAML by `shipyard train` can use code of yours on every rank."""

from __future__ import annotations

import importlib
from typing import Any

from shipyard.errors import InvalidInput


def load_named(ref: str, key: str) -> Any:
    """The callable that `ref` ('package.module:attr') names; `key` is the config key it came from,
    for the message when it cannot be imported."""
    module, sep, attr = ref.partition(":")
    if not sep:
        raise InvalidInput(f"{key} {ref!r} is not of the form 'package.module:attr'")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise InvalidInput(f"{key} {ref!r} cannot be imported: {e}") from None
    if not callable(found):
        raise InvalidInput(f"{key} {ref!r} is not callable")
    return found
