"""The OpenAI channel behind API keys and in the metrics: the model is named in the body, so the
channel itself checks the key against it; listings show only what a key may use; OpenAI's
retrieve-model shares its path with TF Serving's status and both clients read their fields."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests.fixtures import ServerProcess
from tests.serve.test_access import make_key


@pytest.fixture(scope="module")
def keyed(lm_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    base = tmp_path_factory.mktemp("openai-keys")
    repo = Repository(base / "repo")
    import_model(repo, lm_folders["gpt2"], "lm")
    import_model(repo, lm_folders["llama"], "lm-llama")
    file = base / "keys.yaml"
    keys = {"all": make_key(file, "--name", "admin"),
            "lm": make_key(file, "--models", "lm", "--name", "lm-only")}
    server = ServerProcess(repo.root, "--auth", str(file), "--kv-cache-mb", "8")
    yield server, keys
    assert server.stop() == 0, server.output()
    shutil.rmtree(base, ignore_errors=True)


def client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_a_key_reaches_only_its_models(keyed: tuple[ServerProcess, dict[str, str]]) -> None:
    server, keys = keyed
    lm_only = client(server, keys["lm"])
    assert lm_only.completions.create(model="lm", prompt="def f(", max_tokens=3, temperature=0).choices[0].text
    with pytest.raises(openai.PermissionDeniedError) as e:
        lm_only.completions.create(model="lm-llama", prompt="def f(", max_tokens=3)
    assert "may not use model 'lm-llama'" in e.value.message
    with pytest.raises(openai.PermissionDeniedError) as e:  # same answer for a model that does not exist
        lm_only.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert "may not use model 'nope'" in e.value.message
    assert [m.id for m in lm_only.models.list()] == ["lm"]
    assert sorted(m.id for m in client(server, keys["all"]).models.list()) == ["lm", "lm-llama"]
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, "sy_wrong").completions.create(model="lm", prompt="x", max_tokens=1)
    assert e.value.code == "invalid_api_key" and "key" in e.value.message  # OpenAI's shape from the gate
    r = httpx.get(f"{server.url}/v2/models/lm", headers={"authorization": "Bearer sy_wrong"})
    assert r.status_code == 401 and isinstance(r.json()["error"], str)  # V2 keeps its own


def test_openai_requests_are_counted_in_the_metrics(keyed: tuple[ServerProcess, dict[str, str]]) -> None:
    server, keys = keyed
    c = client(server, keys["all"])
    c.completions.create(model="lm", prompt="import ", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="lm", prompt="import ", max_tokens=2, temperature=-1)
    text = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {keys['all']}"}).text
    counts = {(s.labels["channel"], s.labels["model"], s.labels["outcome"]): s.value
              for f in text_string_to_metric_families(text) for s in f.samples
              if s.name.endswith("requests_total") and s.labels.get("channel") == "openai"}
    assert counts.get(("openai", "lm", "success"), 0) >= 1, counts
    assert sum(v for (_, m, o), v in counts.items() if m == "lm" and o != "success") >= 1, counts


def test_retrieve_model_serves_openai_and_tf_serving_clients(keyed: tuple[ServerProcess, dict[str, str]]) -> None:
    server, keys = keyed
    model = client(server, keys["all"]).models.retrieve("lm")
    assert model.id == "lm" and model.object == "model" and model.owned_by == "shipyard" and model.created > 0
    status = httpx.get(f"{server.url}/v1/models/lm", headers={"authorization": f"Bearer {keys['all']}"}).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
