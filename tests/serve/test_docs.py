"""/docs, /redoc and /openapi.json: pages that work offline (their assets come from the server)
and a description that says what the server really takes and answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shipyard.repository import Repository
from tests.fixtures import ServerProcess
from tests.serve.test_access import auth, make_key


@pytest.fixture(scope="module")
def openapi(server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize(("page", "kinds"), [("/docs", {"javascript", "css", "png"}), ("/redoc", {"javascript", "png"})])
def test_pages_load_only_local_assets(server: ServerProcess, page: str, kinds: set[str]) -> None:
    r = httpx.get(server.url + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    found = urls(r.text)
    assert "/openapi.json" in found
    assert [u for u in found if not u.startswith("/")] == [], found  # no CDN, no fonts from elsewhere
    assert "cdn" not in r.text.lower() and "googleapis" not in r.text
    seen = set()
    for url in found:
        asset = httpx.get(server.url + url)
        assert asset.status_code == 200, url
        seen |= {k for k in kinds if k in asset.headers["content-type"]}
        assert len(asset.content) > 1000, url
    assert seen == kinds


def test_unknown_asset_is_404(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/docs/assets/..%2f..%2fsecret")
    assert r.status_code == 404 and "error" in r.json()


def test_no_operation_lists_422(openapi: dict[str, Any]) -> None:
    codes = {code for ops in openapi["paths"].values() for op in ops.values() for code in op["responses"]}
    assert "422" not in codes and "HTTPValidationError" not in openapi["components"]["schemas"]


def schema_of(openapi: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    schema: dict[str, Any] = openapi["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize(("path", "request_model", "fields"), [
    ("/v2/models/{model}/infer", "V2InferRequest", {"inputs", "outputs", "parameters", "id"}),
    ("/v2/models/{model}/versions/{version}/infer", "V2InferRequest", {"inputs"}),
    ("/v1/models/{model}:predict", "V1PredictRequest", {"instances", "inputs"}),
    ("/v1/completions", "CompletionRequest", {"model", "prompt", "max_tokens"}),
    ("/v1/chat/completions", "ChatCompletionRequest", {"model", "messages"}),
])
def test_request_and_response_schemas(openapi: dict[str, Any], path: str, request_model: str, fields: set[str]) -> None:
    op = openapi["paths"][path]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]
    assert ref["$ref"].endswith("/" + request_model)
    assert fields <= set(schema_of(openapi, ref)["properties"])
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema_of(openapi, ok)["properties"]
    for code in ("400", "404", "413", "503", "401", "403", "429"):
        assert code in op["responses"], (path, code)
        error = schema_of(openapi, op["responses"][code]["content"]["application/json"]["schema"])
        assert "error" in error["properties"]


def test_v2_tensor_schema_names_the_datatypes(openapi: dict[str, Any]) -> None:
    tensor = openapi["components"]["schemas"]["V2Tensor"]
    assert {"FP32", "INT64", "BYTES", "BOOL"} <= set(tensor["properties"]["datatype"]["enum"])


def test_metrics_is_text_and_health_is_open(openapi: dict[str, Any]) -> None:
    ok = openapi["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["text/plain"]
    assert "401" not in openapi["paths"]["/v2/health/ready"]["get"]["responses"]
    assert "404" in openapi["paths"]["/v2/models/{model}"]["get"]["responses"]
    # The unversioned path takes no `version` query parameter (FastAPI inferred one).
    assert [p["name"] for p in openapi["paths"]["/v2/models/{model}"]["get"]["parameters"]] == ["model"]


@pytest.fixture(scope="module")
def gated(serve_repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, str]]:
    file = tmp_path_factory.mktemp("docs-keys") / "keys.yaml"
    docs_key, other = make_key(file, "--channels", "docs"), make_key(file, "--channels", "rest_v2")
    proc = ServerProcess(serve_repo.root, "--auth", str(file), "--models", "digits")
    yield proc, docs_key, other
    assert proc.stop() == 0, proc.output()


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"])
def test_docs_are_behind_the_gate(gated: tuple[ServerProcess, str, str], path: str) -> None:
    server, docs_key, other = gated
    assert httpx.get(server.url + path).status_code == 401
    assert httpx.get(server.url + path, headers=auth(other)).status_code == 403
    assert httpx.get(server.url + path, headers=auth(docs_key)).status_code == 200
