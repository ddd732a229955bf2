"""shipyard.client (sync and asyncio, over HTTP and gRPC) and `shipyard infer`, against a real server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shipyard.client import AsyncClient, Client
from shipyard.errors import InvalidInput, NotFound, Unavailable
from shipyard.repository import Repository
from tests.fixtures import SHIPYARD, ServerProcess, digits_test


@pytest.fixture(scope="module")
def server(digits_repo: Repository) -> Iterator[ServerProcess]:
    proc = ServerProcess(digits_repo.root, "--models", "digits")
    yield proc
    assert proc.stop() == 0, proc.output()


def urls(server: ServerProcess) -> list[str]:
    return [server.url, f"grpc://{server.grpc_url}"]


def test_sync_client_both_transports_agree(server: ServerProcess) -> None:
    pixels, labels = digits_test()
    results = []
    for url in urls(server):
        with Client(url) as c:
            assert c.ready() and c.ready("digits")
            assert c.model_metadata("digits")["inputs"][0]["name"] == "pixels"
            out = c.infer("digits", pixels[:16])  # one array: the model's one input
            named = c.infer("digits", {"pixels": pixels[:16]}, version=1, outputs=["logits"])
            assert out["logits"].shape == (16, 10) and out["logits"].dtype == np.float32
            assert (named["logits"].argmax(1) == labels[:16]).mean() > 0.8
            results.append(out["logits"])
    np.testing.assert_array_equal(results[0], results[1])


def test_errors_come_back_as_shipyard_errors(server: ServerProcess) -> None:
    for url in urls(server):
        with Client(url) as c:
            with pytest.raises(NotFound, match="nope"):
                c.infer("nope", {"x": np.zeros(1, np.float32)})
            with pytest.raises(InvalidInput, match=r"shape \[1, 65\]"):
                c.infer("digits", np.zeros((1, 65), np.float32))
    with pytest.raises(InvalidInput, match="must start with"):
        Client("ftp://x")
    with Client("http://127.0.0.1:9") as c, pytest.raises(Unavailable, match="cannot reach"):
        c.infer("digits", np.zeros((1, 1, 8, 8), np.float32))


def test_async_client_runs_many_at_once(server: ServerProcess) -> None:
    pixels, labels = digits_test()

    async def main(url: str) -> np.ndarray:
        async with AsyncClient(url) as c:
            assert await c.ready()
            outs = await asyncio.gather(*(c.infer("digits", pixels[i : i + 1]) for i in range(24)))
            return np.concatenate([o["logits"] for o in outs]).argmax(1)

    for url in urls(server):
        assert (asyncio.run(main(url)) == labels[:24]).mean() > 0.8


def test_infer_command(server: ServerProcess, tmp_path: Path) -> None:
    pixels, _ = digits_test()
    np.save(tmp_path / "x.npy", pixels[:3])
    for url in urls(server):
        out = subprocess.run([*SHIPYARD, "infer", "digits", "--input", str(tmp_path / "x.npy"), "--url", url,
                              "--save", str(tmp_path / "y.npz")], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "logits" in out.stdout and "[3, 10]" in out.stdout
        assert np.load(tmp_path / "y.npz")["logits"].shape == (3, 10)
    bad = subprocess.run([*SHIPYARD, "infer", "nope", "-i", f"x={tmp_path / 'x.npy'}", "--url", server.url],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown model 'nope'" in bad.stderr
    missing = subprocess.run([*SHIPYARD, "infer", "digits", "-i", str(tmp_path / "none.npy"), "--url", server.url],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "cannot read input" in missing.stderr


def test_docs_example_runs(server: ServerProcess) -> None:
    import sys

    from tests.fixtures import ROOT

    code = (ROOT / "docs/examples/shipyard_client.py").read_text()
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}").replace("127.0.0.1:8001", server.grpc_url)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[0", "1", "2", "3]", "[0", "1", "2", "3]"]
    assert "docs/examples/shipyard_client.py" in (ROOT / "README.md").read_text()


def test_importing_the_client_loads_no_serve_module() -> None:
    """A fresh interpreter, so `sys.modules` holds only what `import shipyard.client` pulled in."""
    import json
    import os
    import sys

    from tests.fixtures import ROOT

    code = "import json, sys\nimport shipyard.client\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('shipyard'))))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "shipyard.client" in modules and "shipyard.protocol.messages_pb2" in modules  # the probe sees
    assert [m for m in modules if m.startswith("shipyard.serve")] == []
