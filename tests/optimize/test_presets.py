"""Each preset on the digits model: published with lineage, measured, reported."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from shipyard.optimize.runner import optimize
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from tests.fixtures import digits_test
from tests.optimize.conftest import FAST


def _run_published(repo: Repository, version: int) -> float:
    m = repo.manifest("digits", version)
    rt = runtime_for(m, repo.path("digits", version), RuntimeOptions(threads=1))
    rt.load()
    x, y = digits_test()
    return float((rt.infer({"pixels": x}, ["logits"])["logits"].argmax(1) == y).mean())


def test_int8_static_publishes_lineage_and_reports(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:2", preset_name="int8-static", **FAST)
    m = result.manifest
    assert m.version == 3 and m.format == "onnx"
    assert m.lineage.parent == 2
    assert m.lineage.recipe[0]["pass"] == "quantize" and m.lineage.recipe[0]["mode"] == "static"
    folder = digits_copy.path("digits", 3)
    report = json.loads((folder / "report.json").read_text())
    new = report["rows"][-1]["metrics"]
    parent = next(r for r in report["rows"] if r["role"] == "parent")["metrics"]
    root = next(r for r in report["rows"] if r["role"] == "root")
    assert root["version"] == 1
    for key in ("size_bytes", "parameters", "nonzero_parameters", "latency_b1_p50_ms", "latency_b1_p99_ms",
                "latency_b32_p50_ms", "latency_b32_p99_ms", "accuracy", "loss"):
        assert key in new, key
    assert new["size_bytes"] < 0.4 * parent["size_bytes"]  # int8 weights: about a quarter
    assert parent["accuracy"] - new["accuracy"] <= 0.01
    assert report["deltas"]["vs_parent"]["size_ratio"] < 0.4
    assert {"avx2", "avx512", "vnni", "amx"} <= set(report["machine"]["cpu"])
    assert report["machine"]["threads"] == 1
    assert any("int8 format" in n for n in report["notes"])
    # The published model really is int8 QDQ and really runs.
    import onnx

    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert abs(_run_published(digits_copy, 3) - new["accuracy"]) < 1e-9
    html = (folder / "report.html").read_text()
    assert "<svg" in html and "v3" in html and "v1" in html
    assert not re.search(r"(src|href)=\"https?://", html)  # self-contained: opens offline
    assert m.metrics["accuracy"] == new["accuracy"]


def test_int8_dynamic_on_torch_source_exports_first(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:1", preset_name="int8-dynamic", **FAST)
    passes = [s["pass"] for s in result.manifest.lineage.recipe]
    assert passes == ["export", "quantize"]
    assert any("Conv in fp32" in n for n in result.report["notes"])
    parity = result.report["facts"]["parity"]
    assert parity[0]["pass"] == "export" and parity[0]["max_abs_diff"] <= parity[0]["tolerance"]
    assert parity[0]["tolerance"] == pytest.approx(parity[0]["atol"] + parity[0]["rtol"] * parity[0]["reference_max_abs"])


def test_fp16_is_smaller_and_says_it_is_slow_on_cpu(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:2", preset_name="fp16", **FAST)
    d = result.report["deltas"]["vs_parent"]
    assert 0.45 < d["size_ratio"] < 0.6
    assert any("size option" in n for n in result.report["notes"])
    assert abs(d["accuracy"]) <= 0.01


def test_prune_structured_removes_channels_fine_tunes_and_serves_from_onnx(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:1", preset_name="prune-structured-50",
                      train="zoo:digits-train", eval_data="zoo:digits", **FAST)
    facts = result.report["facts"]["prune_structured"]
    assert facts["channels"]["features.0"] == [16, 8]
    assert facts["channels"]["features.2"] == [32, 16]
    assert facts["kept_whole"] == ["head.4"]  # it feeds the output: its 10 classes stay
    assert facts["fine_tune_epochs"] == 10
    # The preset ends in ONNX: a pruned torch model would still pay PyTorch's per-call overhead.
    assert [s["pass"] for s in result.manifest.lineage.recipe] == ["prune-structured", "export"]
    assert result.manifest.format == "onnx"
    new, parent = result.report["rows"][-1]["metrics"], result.report["rows"][0]["metrics"]
    assert new["parameters"] < 0.3 * parent["parameters"]
    assert parent["accuracy"] - new["accuracy"] <= 0.01  # the bound: at most 1 point lost
    assert "loss" in result.report["deltas"]["vs_parent"]  # ΔL
    assert abs(_run_published(digits_copy, 3) - new["accuracy"]) < 1e-9


def test_lowrank_factors_only_where_it_saves_flops(digits_copy: Repository) -> None:
    result = optimize(digits_copy.root, "digits:1", preset_name="lowrank-90", **FAST)
    factored = result.report["facts"]["low_rank"]["factored"]
    assert factored
    for layer in factored.values():
        m, n = layer["shape"]
        assert layer["rank"] < m * n / (m + n)
        assert layer["params_after"] < layer["params_before"]
    assert result.manifest.format == "torch-export"


def test_unknown_preset_says_what_exists(digits_copy: Repository) -> None:
    from shipyard.errors import InvalidInput

    with pytest.raises(InvalidInput, match="presets: int8-dynamic, int8-static.*distill-half"):
        optimize(digits_copy.root, "digits:2", preset_name="int9", **FAST)
    assert digits_copy.versions("digits") == [1, 2]


def test_lineage_tree_and_pareto_cover_every_version(digits_copy: Repository) -> None:
    from rich.console import Console

    from shipyard.cli.views import lineage_tree

    optimize(digits_copy.root, "digits:2", preset_name="int8-static", **FAST)
    result = optimize(digits_copy.root, "digits:1", preset_name="lowrank-90", **FAST)
    versions = [p["version"] for p in result.report["lineage"]]
    assert versions == [1, 2, 3, 4]
    console = Console(width=200, record=True)
    console.print(lineage_tree(digits_copy, "digits"))
    text = console.export_text()
    # v3 sits under v2, v4 under v1
    lines = text.splitlines()
    v2 = next(i for i, ln in enumerate(lines) if "v2 onnx" in ln)
    v3 = next(i for i, ln in enumerate(lines) if "v3 onnx" in ln)
    assert v3 == v2 + 1 and lines[v3].index("v3") > lines[v2].index("v2")
    assert "quantize(mode=static" in text and "low-rank(energy=0.9)" in text
    html = (digits_copy.path("digits", 4) / "report.html").read_text()
    assert html.count("<circle") == 4
    np.testing.assert_equal(len(result.report["rows"]), 2)  # parent v1 is also the root
