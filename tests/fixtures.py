"""Toy models and a real server process for tests: one place for both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

from shipyard.repository import Repository

ROOT = Path(__file__).resolve().parents[1]
SHIPYARD = [sys.executable, "-m", "shipyard.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoInputs(nn.Module):
    """y = a * 2 + b, sum = row sums of a: two inputs, two outputs, any float batch."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a * 2 + b, a.sum(dim=1, keepdim=True)


def export_onnx(module: nn.Module, path: Path, inputs: dict[str, torch.Tensor], outputs: list[str]) -> Path:
    """A toy ONNX file with a dynamic batch axis on every input and output."""
    import warnings

    axes = {n: {0: "batch"} for n in [*inputs, *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def identity_onnx(path: Path, datatype: int, shape: list[int | str], name: str = "x") -> Path:
    """An ONNX Identity model for one tensor type (onnx.TensorProto enum): every V2 datatype."""
    import onnx
    from onnx import helper

    inp = helper.make_tensor_value_info(name, datatype, shape)
    out = helper.make_tensor_value_info("y", datatype, shape)
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "identity", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class ServerProcess:
    """`shipyard serve` in a child process on a free loopback port; stopped by its PID."""

    def __init__(self, repository: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [*SHIPYARD, "serve", "--repository", str(repository), "--port", str(self.port), "--threads", "1", *args]
        self.grpc_port = free_port() if "--grpc-port" not in args else int(args[args.index("--grpc-port") + 1])
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        if "--grpc-port" not in args:
            cmd += ["--grpc-port", str(self.grpc_port)]
        self.log = open(Path(repository).parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def build_digits(root: Path) -> Repository:
    """The demo's digits model (v1 torch.export, v2 ONNX), as `shipyard demo --no-serve` makes it."""
    from shipyard.cli.demo import build

    repo = Repository(root)
    build(repo, threads=1)
    return repo


def digits_test() -> tuple[np.ndarray, np.ndarray]:
    from shipyard.zoo import digits

    split = digits.load("test")
    return split.pixels, split.labels


# -- tiny causal LMs (issue 5) ----------------------------------------------------------------
LM_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nfor name in os.listdir('.'):\n    print(name)\n",
    "while True:\n    break\n# the end\n",
]


def build_tiny_lm(folder: Path, family: str = "gpt2", context: int = 128) -> Path:
    """A randomly initialised causal LM (2 layers, hidden 64) with a byte-level BPE tokenizer,
    saved as a Hugging Face folder. A wide init spreads the logits so greedy picks are far from
    ties, and greedy output can be compared token for token with transformers' generate."""
    from shipyard.zoo import lm

    tokenizer = lm.train_tokenizer(LM_TEXTS * 8, 320)
    torch.manual_seed(0)
    model = lm.build_model(family, len(tokenizer), layers=2, hidden=64, heads=4, context=context,
                           kv_heads=2 if family == "llama" else None, init_std=0.3)
    return lm.save(model, tokenizer, folder)


@contextmanager
def lm_server(base: Path, models: dict[str, Path], prepare: Callable[[Repository], None] | None = None,
              *args: str) -> Iterator[ServerProcess]:
    """A server (KV cache 8 MiB) over a fresh repository in `base` holding `models` ({name: folder});
    `prepare` adds configs or more models first. Stopped (cleanly, or the test fails) and removed after."""
    import shutil

    from shipyard.runtimes.importer import import_model

    repo = Repository(base / "repo")
    for name, folder in models.items():
        import_model(repo, folder, name)
    if prepare is not None:
        prepare(repo)
    server = ServerProcess(repo.root, "--kv-cache-mb", "8", *args)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output()
        shutil.rmtree(base, ignore_errors=True)


def openai_client(server: ServerProcess) -> Any:
    """The official client against `server`: no retries, so each refusal is seen as it was."""
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def stream_then_leave(url: str, body: dict[str, Any], events: int) -> None:
    """POST a streaming completion to `url` and hang up after `events` server-sent events."""
    with httpx.stream("POST", url, json=body, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == events:
                return


class SmallCNN(nn.Module):
    """The CNN users bring most (3x32x32 input): conv 3->6 k5, max-pool 2, conv 6->16 k5, max-pool 2,
    fc 400 -> 120 -> 84 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


def cnn_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 3x32x32 images of 10 fixed random patterns (the same patterns for every seed)."""
    protos = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    y = rng.integers(0, 10, n)
    return (protos[y] + 1.5 * rng.standard_normal((n, 3, 32, 32))).astype(np.float32), y.astype(np.int64)


def trained_cnn(n: int = 1024, epochs: int = 5) -> SmallCNN:
    """SmallCNN fitted (Adam, a few seconds) to `cnn_data`: ~99% accuracy, so accuracy drops mean something."""
    torch.manual_seed(0)
    net = SmallCNN()
    x, y = cnn_data(n, 0)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for i in range(0, n, 64):
            loss = nn.functional.cross_entropy(net(torch.from_numpy(x[i:i + 64])), torch.from_numpy(y[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
