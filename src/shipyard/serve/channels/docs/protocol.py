"""What /openapi.json says beyond what FastAPI can infer. The channels read their bodies raw (for
speed, and for Triton's binary extension), so FastAPI sees no request model and no response
model, and it lists a 422 validation answer the server never sends. `describe` completes the
document: the request and response models of each kind of operation, the error codes the
server does answer (from `shipyard.protocol.status`), and /metrics as Prometheus text."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from shipyard.serve.channels.openai.protocol import ChatCompletionRequest, CompletionRequest
from shipyard.serve.metrics import CONTENT_TYPE
from shipyard.tensors import DATATYPES

Datatype = Literal[DATATYPES]  # type: ignore[valid-type]


class ErrorBody(BaseModel):
    """Every error of the V2, V1 and operations paths."""

    error: str = Field(description="What went wrong: the value, the limit and the fix.")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, service_unavailable_error or server_error.")
    param: str | None = None
    code: str | None = Field(None, description="e.g. context_length_exceeded, model_not_found, overloaded.")


class OpenAIError(BaseModel):
    """Errors of /v1/completions and /v1/chat/completions, in OpenAI's shape."""

    error: OpenAIErrorDetail


class V2Tensor(BaseModel):
    """One tensor of a KServe V2 request or response."""

    name: str
    datatype: Datatype
    shape: list[int] = Field(description="Dimensions; the row-major element count must match the data.")
    data: list[Any] | None = Field(None, description="Elements, flat or nested, row-major. Absent when the "
                                   "bytes follow the JSON header (parameters.binary_data_size).")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: bytes of this tensor after "
                                              "the JSON header (Triton's binary extension).")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: answer this output as raw bytes.")


class V2InferRequest(BaseModel):
    """POST .../infer. With the Inference-Header-Content-Length header, this JSON is followed by the
    binary tensors; with that header 0, the whole body is one input's raw bytes."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: every output as raw bytes.")
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = Field(None, description="Outputs to return; default: all.")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V1PredictRequest(BaseModel):
    """TF Serving / KServe V1 predict: rows (`instances`) or columns (`inputs`), one of them."""

    instances: list[Any] | None = Field(None, description="One entry per row: a value, or {input: value}.")
    inputs: Any | None = Field(None, description="Columnar: a value, or {input: values}.")


class V1PredictResponse(BaseModel):
    predictions: list[Any] | None = Field(None, description="One entry per row (when the request sent instances).")
    outputs: Any | None = Field(None, description="Columnar (when the request sent inputs).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = Field(None, description="stop or length.")


class Completion(BaseModel):
    """The answer of /v1/completions (with `stream`: server-sent events of chunks like it)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """The answer of /v1/chat/completions (with `stream`: server-sent events of chunks)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


MODELS: list[type[BaseModel]] = [ErrorBody, OpenAIError, V2InferRequest, V2InferResponse, V1PredictRequest,
                                 V1PredictResponse, CompletionRequest, ChatCompletionRequest, Completion, ChatCompletion]

# Why each code is answered.
REASONS = {
    400: "Invalid request: the message names the value and what is expected.",
    401: "No API key, or an unknown one (only with --auth).",
    403: "The key may not use this model or channel (only with --auth).",
    404: "No such model or version.",
    413: "Body over --max-request-bytes.",
    429: "The key's rate limit (only with --auth); Retry-After says when to retry.",
    500: "The model failed while running.",
    503: "Not ready, or the queue is full; Retry-After says when to retry.",
}
ACCESS = (401, 403, 429)

# (method, path regex) -> request model, response model, error model, error codes. First match wins.
OPERATIONS: list[tuple[str, str, type[BaseModel] | None, type[BaseModel] | None, type[BaseModel], tuple[int, ...]]] = [
    ("post", r"/infer$", V2InferRequest, V2InferResponse, ErrorBody, (400, 404, 413, 500, 503)),
    ("post", r":predict$", V1PredictRequest, V1PredictResponse, ErrorBody, (400, 404, 413, 500, 503)),
    ("post", r"^/v1/completions$", CompletionRequest, Completion, OpenAIError, (400, 404, 413, 500, 503)),
    ("post", r"^/v1/chat/completions$", ChatCompletionRequest, ChatCompletion, OpenAIError, (400, 404, 413, 500, 503)),
    ("post", r"^/v2/repository/", None, None, ErrorBody, (400, 404, 413, 500)),
    ("get", r"\{model\}", None, None, ErrorBody, (400, 404)),
    ("get", r"", None, None, ErrorBody, ()),
]
OPEN = ("/health", "/v2/health/live", "/v2/health/ready", "/")


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def describe(doc: dict[str, Any]) -> dict[str, Any]:
    """Complete FastAPI's OpenAPI document in place (and return it)."""
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(defs.get("$defs", {}))
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            # FastAPI takes `version`, a path parameter of the versioned twin, for a query parameter.
            op["parameters"] = [p for p in op.get("parameters", []) if p["in"] != "query"]
            if not op["parameters"]:
                del op["parameters"]
            responses: dict[str, Any] = op.setdefault("responses", {})
            responses.pop("422", None)
            if path == "/metrics":
                responses["200"] = {"description": "Prometheus text exposition.",
                                    "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}
            found = next((o for o in OPERATIONS if o[0] == method and re.search(o[1], path)), None)
            if found is None:
                continue
            _, _, request, response, error, codes = found
            if request is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
            if response is not None:
                responses["200"] = {"description": "Success.", "content": {"application/json": {"schema": _ref(response)}}}
            for code in sorted({*codes, *(() if path in OPEN else ACCESS)}):
                responses[str(code)] = {"description": REASONS[code],
                                        "content": {"application/json": {"schema": _ref(error)}}}
    return doc
