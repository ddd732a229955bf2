"""Small pieces every HTTP channel needs the same way."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from shipyard.errors import InvalidInput


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson, not the stdlib: numpy-derived floats and large bodies encode several times faster."""
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json", headers=headers)


def parse_version(text: str | None) -> int | None:
    """A version path segment: None (absent) or a positive integer, else a 400 naming it."""
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"model version {text!r} must be a positive integer")
    return int(text)
