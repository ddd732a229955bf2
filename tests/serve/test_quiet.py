"""Binary and raw inputs are views of a request's immutable bytes: a PyTorch model is handed them
without the "NumPy array is not writable" warning, in the server's log or under `-W error`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http

from shipyard.repository import Repository
from tests.fixtures import ROOT, ServerProcess, digits_test


def test_binary_inputs_to_a_torch_model_log_no_warning(serve_repo: Repository) -> None:
    pixels = digits_test()[0][:4]
    server = ServerProcess(serve_repo.root, "--models", "digits", "--log-level", "info")
    try:
        x = http.InferInput("pixels", list(pixels.shape), "FP32")
        x.set_data_from_numpy(pixels, binary_data=True)
        out = http.InferenceServerClient(server.url[7:]).infer("digits", [x], model_version="1")
        g = grpc.InferInput("pixels", list(pixels.shape), "FP32")
        g.set_data_from_numpy(pixels)
        out_grpc = grpc.InferenceServerClient(server.grpc_url).infer("digits", [g], model_version="1")
    finally:
        assert server.stop() == 0, server.output()
    assert out.as_numpy("logits").shape == out_grpc.as_numpy("logits").shape == (4, 10)
    log = server.output()
    assert "ready:" in log  # the log was captured
    assert "not writable" not in log and "Warning" not in log, log


def test_read_only_input_raises_no_warning_in_process(serve_repo: Repository, tmp_path: Path) -> None:
    # A fresh process: torch warns once per process, so an earlier test could hide it here.
    code = f"""
import warnings
import numpy as np
from shipyard.repository import Repository
from shipyard.runtimes import runtime_for
from shipyard.runtimes.base import RuntimeOptions
repo = Repository({str(serve_repo.root)!r})
runtime = runtime_for(repo.manifest("digits", 1), repo.path("digits", 1), RuntimeOptions(threads=1))
runtime.load()
pixels = np.frombuffer(np.ones((2, 1, 8, 8), np.float32).tobytes(), np.float32).reshape(2, 1, 8, 8)
assert not pixels.flags.writeable
warnings.simplefilter("error")
out = runtime.infer({{"pixels": pixels}}, ["logits"])
print(out["logits"].shape)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(2, 10)"
    assert np.__name__ and "Warning" not in r.stderr
