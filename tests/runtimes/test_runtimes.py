"""Every runtime loads a version from the repository, infers like the source model, and lets other
Python threads run while it computes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.repository import Manifest, Repository, TensorSpec
from shipyard.runtimes import REGISTRY, Runtime, RuntimeOptions, runtime_for
from shipyard.runtimes.importer import import_model
from tests.fixtures import TwoInputs, export_onnx

SPECS = {
    "inputs": [TensorSpec(name="a", datatype="FP32", shape=[-1, 4]), TensorSpec(name="b", datatype="FP32", shape=[-1, 4])],
    "outputs": [TensorSpec(name="y", datatype="FP32", shape=[-1, 4]), TensorSpec(name="sum", datatype="FP32", shape=[-1, 1])],
}


def load(repo: Repository, name: str, version: int | None = None) -> Runtime:
    m = repo.manifest(name, version)
    repo.verify(m)
    rt = runtime_for(m, repo.path(name, m.version), RuntimeOptions(threads=1))
    rt.load()
    return rt


@pytest.mark.parametrize("fmt", ["onnx", "torch-export", "torchscript"])
def test_runtime_infers_like_the_source(repo: Repository, two_inputs_files: dict[str, Path], fmt: str) -> None:
    m = import_model(repo, two_inputs_files[fmt], "two", **SPECS)  # type: ignore[arg-type]
    assert m.format == fmt
    rt = load(repo, "two")
    assert isinstance(rt, REGISTRY[fmt])
    assert rt.signature == m.signature
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        a = rng.standard_normal((batch, 4)).astype(np.float32)
        b = rng.standard_normal((batch, 4)).astype(np.float32)
        with torch.no_grad():
            y, s = TwoInputs()(torch.from_numpy(a), torch.from_numpy(b))
        out = rt.infer({"a": a, "b": b}, ["y", "sum"])
        assert set(out) == {"y", "sum"}
        np.testing.assert_allclose(out["y"], y.numpy(), atol=1e-6)
        np.testing.assert_allclose(out["sum"], s.numpy(), atol=1e-5)
        assert out["y"].dtype == np.float32 and out["sum"].shape == (batch, 1)
        # Asking for one output gives that one.
        assert list(rt.infer({"a": a, "b": b}, ["sum"])) == ["sum"]
    rt.unload()


def test_digits_versions_agree(digits_repo: Repository) -> None:
    """The demo's torch.export (v1) and ONNX (v2) versions give the same logits."""
    from tests.fixtures import digits_test

    pixels, labels = digits_test()
    v1, v2 = load(digits_repo, "digits", 1), load(digits_repo, "digits", 2)
    assert (v1.manifest.format, v2.manifest.format) == ("torch-export", "onnx")
    a = v1.infer({"pixels": pixels[:64]}, ["logits"])["logits"]
    b = v2.infer({"pixels": pixels[:64]}, ["logits"])["logits"]
    assert a.shape == (64, 10)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert (a.argmax(1) == labels[:64]).mean() > 0.9


def test_unknown_format_names_the_known_ones(tmp_path: Path) -> None:
    m = Manifest(name="m", version=3, format="tensorflow", files=[], signature={"inputs": [], "outputs": []})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as e:
        runtime_for(m, tmp_path, RuntimeOptions())
    assert e.value.message == (
        "m:3 has format 'tensorflow', which no runtime serves; known formats: "
        "hf-causal-lm, hf-transformers, onnx, tflite, torch-export, torchscript"
    )


# -- the GIL -----------------------------------------------------------------------------------
class Chain(nn.Module):
    """`depth` matmuls of one [width, width] weight: a long, kernel-bound call."""

    def __init__(self, width: int = 1024, depth: int = 12) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(width, width, generator=gen) / width**0.5)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.depth):
            x = torch.tanh(x @ self.w)
        return x


@pytest.fixture(scope="module")
def chain_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    d = tmp_path_factory.mktemp("chain")
    repo = Repository(d / "repo")
    module = Chain().eval()
    x = torch.zeros(2, 1024)
    spec = {"inputs": [TensorSpec(name="x", datatype="FP32", shape=[-1, 1024])],
            "outputs": [TensorSpec(name="y", datatype="FP32", shape=[-1, 1024])]}
    import_model(repo, export_onnx(module, d / "chain.onnx", {"x": x}, ["y"]), "chain-onnx")
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(d / "chain.pt2"))
    import_model(repo, d / "chain.pt2", "chain-torch-export", outputs=spec["outputs"])
    torch.jit.script(module).save(str(d / "chain.ts"))
    import_model(repo, d / "chain.ts", "chain-torchscript", **spec)  # type: ignore[arg-type]
    return repo


def count_until(stop: list[bool]) -> list[tuple[float, int]]:
    """Count in pure Python until `stop[0]`; every 1,000 counts, note (time, count)."""
    marks, n = [], 0
    while not stop[0]:
        n += 1
        if n % 1000 == 0:
            marks.append((time.perf_counter(), n))
    return marks


@pytest.mark.parametrize("fmt", ["onnx", "torch-export", "torchscript"])
def test_infer_releases_the_gil(chain_repo: Repository, fmt: str) -> None:
    """A thread counting in pure Python keeps a good part of its speed (40-100% here, where the two
    cores may share one physical core) while another thread runs a long inference. Were the GIL
    held for the call, the counter would note (almost) nothing between the call's start and end."""
    rt = load(chain_repo, f"chain-{fmt}")
    x = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    rt.infer({"x": x[:8]}, ["y"])  # warm up

    # Baseline: how fast this thread counts with nothing else running.
    stop = [False]
    timer = threading.Timer(0.2, lambda: stop.__setitem__(0, True))
    timer.start()
    marks = count_until(stop)
    alone = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])

    stop = [False]
    call: dict[str, float] = {}
    result: dict[str, np.ndarray] = {}

    def work() -> None:
        call["start"] = time.perf_counter()
        result.update(rt.infer({"x": x}, ["y"]))
        call["end"] = time.perf_counter()
        stop[0] = True

    worker = threading.Thread(target=work)
    worker.start()
    marks = count_until(stop)
    worker.join()

    assert result["y"].shape == (1024, 1024)
    length = call["end"] - call["start"]
    assert length > 0.05, f"inference took only {length * 1000:.1f} ms: too short to tell"
    inside = [n for t, n in marks if call["start"] <= t <= call["end"]]
    during = (inside[-1] - inside[0]) / length if len(inside) > 1 else 0.0
    assert during > 0.15 * alone, (
        f"{fmt}: counting ran at {during:,.0f}/s during a {length:.2f} s inference vs "
        f"{alone:,.0f}/s alone: the runtime holds the GIL"
    )
