"""torch dtypes as KServe V2 datatypes (torch is imported only when asked)."""

from __future__ import annotations

from typing import Any


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
