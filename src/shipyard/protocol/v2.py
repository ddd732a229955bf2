"""Wire facts of KServe V2 (the Open Inference Protocol) with Triton's binary tensor extension:
headers, parameters, the REST path grammar and the gRPC service name."""

from __future__ import annotations

import re

from shipyard.errors import InvalidInput, shown

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# Request-level and per-tensor parameters of the binary tensor extension.
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"

# The REST paths, as templates: `{name}` is one path segment. The server's routes, its fast
# path and its access table are all built from these, and the client fills them in.
HEALTH_LIVE = "/v2/health/live"
HEALTH_READY = "/v2/health/ready"
MODEL = "/v2/models/{model}"
VERSION = "/versions/{version}"
REPOSITORY = "/v2/repository"
REPOSITORY_MODEL = REPOSITORY + "/models/{model}"

GRPC_SERVICE = "inference.GRPCInferenceService"


def model_path(model: str, version: int | None = None) -> str:
    """`/v2/models/{model}[/versions/{version}]` filled in."""
    return MODEL.format(model=model) + (VERSION.format(version=version) if version else "")


def path_pattern(template: str) -> str:
    """A path template as a regex: each `{name}` a named group of one path segment."""
    return re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)


# More digits than any version number can have (versions count publishes): refused before int(),
# which would spend time on (and past 4,300 digits refuse) a long one.
VERSION_DIGITS = 18


def parse_version(text: str) -> int:
    """A version as a path segment or a gRPC field writes it: ASCII digits only, as the repository
    names version folders ('١' and '²' pass `str.isdigit()`, and int() reads them), at least 1."""
    if not (text.isascii() and text.isdigit()) or len(text) > VERSION_DIGITS or int(text) < 1:
        raise InvalidInput(f"model version {shown(text)} must be a positive integer")
    return int(text)
