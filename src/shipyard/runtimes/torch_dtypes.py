"""torch dtypes as KServe V2 datatypes, and numpy inputs as torch takes them (torch is imported
only when asked)."""

from __future__ import annotations

from typing import Any

import numpy as np


def writable(array: np.ndarray) -> np.ndarray:
    """The array itself when it is C-contiguous and writable, else a copy that is. Binary and raw
    inputs are views of the request's immutable bytes (`np.frombuffer`): `torch.from_numpy` would
    warn on each one and hand the model a tensor it must not write. Copying here, rather than
    where the view is made, costs nothing for the runtimes that read read-only memory (ONNX Runtime)."""
    return np.require(array, requirements=("C", "W"))


def torch_to_v2(dtype: Any) -> str:
    import torch

    table = {
        torch.bool: "BOOL", torch.uint8: "UINT8", torch.int8: "INT8", torch.int16: "INT16",
        torch.int32: "INT32", torch.int64: "INT64", torch.float16: "FP16", torch.float32: "FP32",
        torch.float64: "FP64", torch.uint16: "UINT16", torch.uint32: "UINT32",
        torch.uint64: "UINT64",
    }
    if dtype not in table:
        from shipyard.errors import InvalidInput

        raise InvalidInput(f"torch dtype {dtype} has no V2 datatype")
    return table[dtype]
