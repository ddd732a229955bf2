"""What the channels declare, and the tables built from it: the access table every HTTP path is
checked by, the channel list API keys name, and the error-to-status tables of each transport."""

from __future__ import annotations

import re

import pytest

from shipyard import errors
from shipyard.protocol import status
from shipyard.serve.channels import REGISTRY, channels, path_table, route_of
from tests.fixtures import ROOT

CHANNELS = ROOT / "src/shipyard/serve/channels"


def test_every_registered_channel_declares_itself_under_its_folder_name() -> None:
    assert [c.name for c in channels()] == list(REGISTRY) == ["rest_v2", "grpc_v2", "rest_v1", "openai", "metrics", "docs"]


@pytest.mark.parametrize(("path", "route"), [
    ("/v2", ("rest_v2", None)),
    ("/v2/models/stats", ("rest_v2", None)),
    ("/v2/models/digits/versions/2/infer", ("rest_v2", "digits")),
    ("/v2/models/digits/anything/below", ("rest_v2", "digits")),
    ("/v2/repository/models/digits/load", ("rest_v2", "digits")),
    ("/v2/repository/index", ("rest_v2", None)),
    ("/v1/models/digits", ("rest_v1", "digits")),
    ("/v1/models/digits/versions/1:predict", ("rest_v1", "digits")),
    ("/v1/models", ("openai", None)),
    ("/v1/chat/completions", ("openai", None)),
    ("/v1/unknown/path", ("openai", None)),  # the rest of /v1 falls to the openai channel
    ("/metrics", ("metrics", None)),
    ("/docs", ("docs", None)),
    ("/docs/assets/swagger-ui.css", ("docs", None)),
    ("/openapi.json", ("docs", None)),
    ("/redoc", ("docs", None)),
    ("/docsx", ("http", None)),
])
def test_the_access_table_names_each_paths_channel_and_model(path: str, route: tuple[str, str | None]) -> None:
    assert route_of(path_table(channels()), path) == route


def test_keys_help_lists_the_registered_channels() -> None:
    from shipyard.cli.keys import _channels

    assert _channels() == ", ".join(REGISTRY)


def test_no_channel_reaches_past_the_data_plane() -> None:
    """The data plane is a channel's only door: no `plane.manager`, no manager, batcher or runtime import."""
    reach = re.compile(r"\.manager\b|serve\.manager|serve\.batcher|shipyard\.runtimes|\.reject\(")
    offenders = [f"{p.relative_to(CHANNELS)}:{i}" for p in sorted(CHANNELS.rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if reach.search(line)]
    assert offenders == []


# Each error class's answer on each transport, as clients have always seen it.
WIRE = {
    errors.ShipyardError: (400, "INVALID_ARGUMENT"), errors.InvalidInput: (400, "INVALID_ARGUMENT"),
    errors.PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"), errors.UnsafeModel: (400, "FAILED_PRECONDITION"),
    errors.NotFound: (404, "NOT_FOUND"), errors.Conflict: (409, "ALREADY_EXISTS"),
    errors.Unavailable: (503, "UNAVAILABLE"), errors.IntegrityError: (500, "INTERNAL"),
    errors.InferenceFailed: (500, "INTERNAL"), errors.TrainingFailed: (400, "INVALID_ARGUMENT"),
    errors.Unauthenticated: (401, "UNAUTHENTICATED"), errors.PermissionDenied: (403, "PERMISSION_DENIED"),
    errors.RateLimited: (429, "RESOURCE_EXHAUSTED"), errors.Disconnected: (499, "CANCELLED"),
    errors.UnsupportedMediaType: (415, "INVALID_ARGUMENT"),
    errors.RequestTimeout: (408, "DEADLINE_EXCEEDED"), errors.HeadersTooLarge: (431, "RESOURCE_EXHAUSTED"),
}


def test_every_error_class_has_its_status_on_each_transport() -> None:
    found = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ShipyardError)}
    assert found == set(WIRE)
    for cls, (http, grpc) in WIRE.items():
        exc = cls("x", 1.0) if cls in (errors.Unavailable, errors.RateLimited) else cls("x")
        assert (status.http_status(exc), status.grpc_code(exc)) == (http, grpc), cls.__name__


def test_every_client_fault_is_counted_as_the_clients_never_as_an_error() -> None:
    """A 400 for `temperature: -1` was counted as `error`, the outcome kept for the server's
    faults (issue 13 metrics conventions): each 4xx class counts as `invalid` or an outcome of its
    own, each 5xx as `error` or `unavailable`."""
    from pydantic import BaseModel, Field, ValidationError

    from shipyard.serve.metrics import outcome_of

    own = {errors.Unauthenticated: "unauthenticated", errors.PermissionDenied: "forbidden",
           errors.RateLimited: "rate_limited", errors.NotFound: "not_found", errors.Disconnected: "cancelled"}
    for cls, (http, _) in WIRE.items():
        exc = cls("x", 1.0) if cls in (errors.Unavailable, errors.RateLimited) else cls("x")
        expected = own.get(cls, "invalid") if http < 500 else {errors.Unavailable: "unavailable"}.get(cls, "error")
        assert outcome_of(exc) == expected, cls.__name__

    class Body(BaseModel):
        temperature: float = Field(ge=0)

    with pytest.raises(ValidationError) as e:
        Body(temperature=-1)
    assert outcome_of(e.value) == "invalid"
    assert outcome_of(RuntimeError("a bug")) == "error"


def test_a_client_raises_the_broad_class_where_codes_are_shared() -> None:
    assert status.HTTP_CLASS[400] is errors.InvalidInput and status.HTTP_CLASS[500] is errors.InferenceFailed
    assert status.GRPC_CLASS["RESOURCE_EXHAUSTED"] is errors.RateLimited
    assert status.GRPC_CLASS["INTERNAL"] is errors.InferenceFailed


def test_a_new_error_class_answers_as_its_nearest_listed_ancestor() -> None:
    class TooManyTokens(errors.InvalidInput):
        pass

    class Quota(errors.RateLimited):
        pass

    assert status.http_status(TooManyTokens("x")) == 400 and status.grpc_code(TooManyTokens("x")) == "INVALID_ARGUMENT"
    assert status.http_status(Quota("x", 1)) == 429 and status.grpc_code(Quota("x", 1)) == "RESOURCE_EXHAUSTED"
