"""Timing saved versions side by side (`latencies_side_by_side`), used by the search's finalists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import InvalidInput
from shipyard.optimize import measure
from shipyard.optimize.data import Dataset
from shipyard.repository import Repository
from tests.fixtures import digits_test


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[bool]]]:
    """(format, [unloaded]) for each runtime that measure opens while the test runs."""
    seen: list[tuple[str, list[bool]]] = []
    real = measure.runtime_for

    def spy(manifest: Any, path: Path, options: Any) -> Any:
        runtime = real(manifest, path, options)
        unloaded: list[bool] = []
        unload = runtime.unload
        runtime.unload = lambda: (unloaded.append(True), unload())
        seen.append((manifest.format, unloaded))
        return runtime

    monkeypatch.setattr(measure, "runtime_for", spy)
    return seen


def _versions(repo: Repository) -> dict[str, tuple[Path, str, dict[str, Any]]]:
    out = {}
    for key, version in (("torch", 1), ("onnx", 2)):
        m = repo.manifest("digits", version)
        out[key] = (repo.path("digits", version), m.format, m.extra)
    return out


def test_latencies_side_by_side_times_each_version_then_unloads_it(
        digits_repo: Repository, opened: list[tuple[str, list[bool]]]) -> None:
    x, y = digits_test()
    sig = digits_repo.manifest("digits", 1).signature
    got = measure.latencies_side_by_side(_versions(digits_repo), sig, Dataset({"pixels": x[:32]}, y[:32], "digits"),
                                         threads=1, budget_s=0.05, rounds=3)
    assert list(got) == ["torch", "onnx"]
    for lat in got.values():
        assert set(lat) == {f"latency_b{b}_p{q}_ms" for b in measure.BATCHES for q in (50, 99)}
        for b in measure.BATCHES:
            assert 0 < lat[f"latency_b{b}_p50_ms"] <= lat[f"latency_b{b}_p99_ms"]
    assert [fmt for fmt, _ in opened] == ["torch-export", "onnx"]  # both loaded at once, in order
    assert all(unloaded == [True] for _, unloaded in opened)  # each unloaded exactly once


def test_versions_already_loaded_are_unloaded_when_a_later_one_cannot_be(
        digits_repo: Repository, opened: list[tuple[str, list[bool]]]) -> None:
    x, _ = digits_test()
    versions = _versions(digits_repo)
    path, _, extra = versions["onnx"]
    versions["onnx"] = (path, "no-such-format", extra)
    sig = digits_repo.manifest("digits", 1).signature
    with pytest.raises(InvalidInput, match="'no-such-format', which no runtime serves"):
        measure.latencies_side_by_side(versions, sig, Dataset({"pixels": x[:8]}, None, "digits"), threads=1,
                                       budget_s=0.05, rounds=2)
    assert [(fmt, unloaded) for fmt, unloaded in opened] == [("torch-export", [True])]
