from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch

from shipyard.repository import Repository
from shipyard.runtimes.importer import import_model
from tests.fixtures import ServerProcess, TwoInputs, export_onnx, identity_onnx

# Every V2 datatype and the ONNX element type that carries it.
ONNX_TYPES = {
    "BOOL": onnx.TensorProto.BOOL, "UINT8": onnx.TensorProto.UINT8, "UINT16": onnx.TensorProto.UINT16,
    "UINT32": onnx.TensorProto.UINT32, "UINT64": onnx.TensorProto.UINT64, "INT8": onnx.TensorProto.INT8,
    "INT16": onnx.TensorProto.INT16, "INT32": onnx.TensorProto.INT32, "INT64": onnx.TensorProto.INT64,
    "FP16": onnx.TensorProto.FLOAT16, "FP32": onnx.TensorProto.FLOAT, "FP64": onnx.TensorProto.DOUBLE,
    "BYTES": onnx.TensorProto.STRING,
}


class Repeated(torch.nn.Module):
    """One 512x512 layer applied `depth` times: slow per row, small on disk."""

    def __init__(self, width: int = 512, depth: int = 64) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, width, bias=False)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.depth):
            x = self.layer(x)
        return x


def slow_onnx(path: Path) -> Path:
    """x FP32 [-1, 512] -> y: about 34 MFLOP a row, so 8,000 rows hold the model for seconds."""
    return export_onnx(Repeated(), path, {"x": torch.zeros(2, 512)}, ["y"])


@pytest.fixture(scope="session")
def serve_repo(digits_repo: Repository, tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """digits (v1 torch.export, v2 ONNX) plus toy models for every datatype, two inputs, a slow
    model, and one whose file was tampered with after publishing (it must fail to load)."""
    base = tmp_path_factory.mktemp("serve")
    root = base / "repo"
    shutil.copytree(digits_repo.root, root)
    repo = Repository(root)
    files = base / "files"
    files.mkdir()
    for dt, onnx_type in ONNX_TYPES.items():
        import_model(repo, identity_onnx(files / f"id_{dt}.onnx", onnx_type, ["batch", 3]), f"id_{dt.lower()}")
    export_onnx(TwoInputs(), files / "two.onnx", {"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, ["y", "sum"])
    import_model(repo, files / "two.onnx", "two")
    import_model(repo, slow_onnx(files / "slow.onnx"), "slow")
    broken = import_model(repo, files / "two.onnx", "broken")
    with open(repo.path("broken", broken.version) / "model.onnx", "ab") as f:
        f.write(b"tampered")
    return repo


@pytest.fixture(scope="module")
def server(serve_repo: Repository) -> Iterator[ServerProcess]:
    proc = ServerProcess(serve_repo.root, "--max-request-bytes", str(1 << 20))
    yield proc
    assert proc.stop() == 0, proc.output()


@pytest.fixture
def fresh_repo(serve_repo: Repository, tmp_path: Path) -> Repository:
    root = tmp_path / "repo"
    shutil.copytree(serve_repo.root, root)
    return Repository(root)
