"""Child-process bodies for the repository's multi-process tests. They live in their own small
module (not a test file, not tests/fixtures.py) so a spawned child imports only the repository."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from shipyard.repository import Repository, Signature, TensorSpec

SIGNATURE = Signature(
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 4])],
)


def payload(writer: int, i: int, size: int = 64 * 1024) -> bytes:
    """Distinct, checkable content for publish `i` of `writer`."""
    seed = hashlib.sha256(f"{writer}:{i}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def publish_many(root: str, name: str, writer: int, count: int, barrier: Any) -> None:
    """Publish `count` versions, each holding a file written in chunks, as one of several writers."""
    repo = Repository(root)
    barrier.wait(timeout=60)
    for i in range(count):
        data = payload(writer, i)
        with repo.publish(name, "onnx", SIGNATURE, metrics={"writer": writer, "i": i}) as staging:
            with open(staging.path / "model.onnx", "wb") as f:
                for k in range(0, len(data), 16 * 1024):
                    f.write(data[k : k + 16 * 1024])
                    f.flush()
            (staging.path / "sub").mkdir()
            (staging.path / "sub" / "writer.txt").write_text(f"{writer} {i} {os.getpid()}")


def publish_then_hang(root: str, name: str, ready: Any) -> None:
    """Start a publish, write half a file, tell the parent, and wait to be killed."""
    repo = Repository(root)
    with repo.publish(name, "onnx", SIGNATURE) as staging:
        with open(staging.path / "model.onnx", "wb") as f:
            f.write(payload(99, 0)[:1000])
            f.flush()
            os.fsync(f.fileno())
        ready.set()
        time.sleep(600)


def hold_lock_then_hang(root: str, name: str, ready: Any) -> None:
    """Take the model's publish lock (as a commit does) and wait to be killed while holding it."""
    repo = Repository(root)
    with repo._lock(name):
        ready.set()
        time.sleep(600)


def staging_dirs(root: Path, name: str) -> list[Path]:
    return sorted(p for p in (root / name).iterdir() if p.name.startswith(".staging-") and p.is_dir())
