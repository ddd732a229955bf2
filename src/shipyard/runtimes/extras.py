"""Optional dependencies, imported only when a model needs them (never at `shipyard --help` or at
server start): without them the error names the extra that installs them."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from shipyard.errors import InvalidInput


def require(module: str, extra: str, what: str) -> ModuleType:
    """`import module`, or an error naming `pip install 'shipyard[extra]'`."""
    if module in ("tensorflow", "keras", "tf2onnx"):
        # TensorFlow prints pages of C++ log lines at import (CPU features, oneDNN) unless told not to.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidInput(
            f"{what} needs the Python package '{module}', which is not installed here: "
            f"pip install 'shipyard[{extra}]'"
        ) from None
