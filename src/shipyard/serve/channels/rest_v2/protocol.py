"""Checks of the V2 REST JSON shapes. The wire facts themselves (headers, parameters, paths) are
in `shipyard.protocol.v2`, which the client shares."""

from __future__ import annotations

from typing import Any

from shipyard.errors import InvalidInput, shown
from shipyard.tensors import check_shape


def expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def expect_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a JSON array, got {type(value).__name__}")
    return value


def expect_shape(value: Any, what: str) -> list[int]:
    shape = expect_list(value, f"{what} 'shape'")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{what} 'shape' must be a list of non-negative integers, got {shown(shape)}")
    return check_shape(shape, what)
