"""Passes on an imported ONNX model (the 3x32x32 CNN users bring, exported by torch.onnx): clip,
low-rank and quantization on the graph itself, structured pruning through the conversion to PyTorch;
each reports its ΔL, and no result is larger than its parent."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from shipyard.errors import InvalidInput
from shipyard.optimize.data import Dataset
from shipyard.optimize.recipe import parse_recipe
from shipyard.optimize.runner import check_not_larger, model_bytes, optimize
from shipyard.repository import Manifest, Repository, Signature
from shipyard.runtimes.importer import import_model
from tests.fixtures import cnn_data, export_onnx, trained_cnn
from tests.optimize.conftest import FAST


@pytest.fixture(scope="module")
def cnn_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    base = tmp_path_factory.mktemp("cnn")
    x, _ = cnn_data(2, 1)
    path = export_onnx(trained_cnn(), base / "cnn.onnx", {"image": torch.from_numpy(x)}, ["logits"])
    repo = Repository(base / "repo")
    import_model(repo, path, "cnn")
    return repo


@pytest.fixture
def cnn(cnn_repo: Repository, tmp_path: Path) -> Repository:
    shutil.copytree(cnn_repo.root, tmp_path / "repo")
    return Repository(tmp_path / "repo")


def data(n: int, seed: int, labels: bool = True) -> Dataset:
    x, y = cnn_data(n, seed)
    return Dataset({"image": x}, y if labels else None, f"cnn-{seed}")


EVAL = data(128, 2)


def _run(repo: Repository, **kw: Any) -> dict[str, Any]:
    result = optimize(repo.root, "cnn:1", eval_data=EVAL, **FAST, **kw)
    report = result.report
    assert result.manifest.format == "onnx"
    new, parent = report["rows"][-1]["metrics"], report["rows"][0]["metrics"]
    assert new["size_bytes"] <= parent["size_bytes"]  # nothing grows
    assert math.isfinite(report["deltas"]["vs_parent"]["loss"])  # ΔL reported
    return report


def test_structured_pruning_converts_the_onnx_graph_and_comes_back_as_onnx(cnn: Repository) -> None:
    report = _run(cnn, preset_name="prune-structured-50")
    channels = report["facts"]["prune_structured"]["channels"]
    assert channels["conv1"] == [6, 3] and channels["fc1"] == [120, 60], channels
    assert any("converted to PyTorch" in n for n in report["notes"])
    new, parent = report["rows"][-1]["metrics"], report["rows"][0]["metrics"]
    assert new["parameters"] < 0.5 * parent["parameters"]


def test_clip_works_on_the_onnx_initializers(cnn: Repository) -> None:
    report = _run(cnn, recipe=[{"pass": "clip", "percentile": 99.0}])
    moved = report["facts"]["clip"]
    assert len(moved) == 5 and all(0 < v <= 0.02 for v in moved.values()), moved  # 2 convs + 3 gemms
    assert abs(report["deltas"]["vs_parent"]["loss"]) < 0.5


def test_low_rank_factors_only_layers_where_it_pays(cnn: Repository) -> None:
    # ratio 0.7: fc1 (120x400) r=84 < 92.3 and fc3 (10x84) r=7 < 8.9 pay; fc2 (84x120) r=59 >= 49.4 does not
    report = _run(cnn, recipe=[{"pass": "low-rank", "ratio": 0.7}])
    facts = report["facts"]["low_rank"]
    assert len(facts["factored"]) == 2 and len(facts["kept"]) == 1, facts
    for f in facts["factored"].values():
        assert f["params_after"] < f["params_before"]
    assert len(facts["conv_kept"]) == 2


def test_low_rank_refuses_when_no_layer_would_shrink(cnn: Repository) -> None:
    with pytest.raises(InvalidInput, match=r"factored no layer.*mn/\(m\+n\).*lower 'energy'"):
        optimize(cnn.root, "cnn:1", recipe=[{"pass": "low-rank", "ratio": 0.95}], eval_data=EVAL, **FAST)
    assert cnn.versions("cnn") == [1]


def test_static_int8_on_the_onnx_source(cnn: Repository) -> None:
    report = _run(cnn, preset_name="int8-static", calibrate=data(32, 3, labels=False))
    assert report["rows"][-1]["metrics"]["size_bytes"] < 0.5 * report["rows"][0]["metrics"]["size_bytes"]
    assert abs(report["deltas"]["vs_parent"]["loss"]) < 0.5


def test_distilling_an_onnx_teacher_derives_its_student_in_pytorch(cnn: Repository) -> None:
    steps = [{"pass": "distill", "width": 0.5, "epochs": 1, "max_samples": 256}, {"pass": "export", "format": "onnx"}]
    report = _run(cnn, recipe=steps, train=data(256, 4))
    facts = report["facts"]["distill"]
    assert facts["parameters_student"] < 0.5 * facts["parameters_teacher"], facts
    assert facts["channels"]["conv2"] == [16, 8], facts


def test_an_op_the_conversion_does_not_know_is_named_with_the_way_out(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    w1, w2 = np.ones((8, 4), np.float32), np.ones((2, 8), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
         helper.make_node("Cos", ["h"], ["c"], name="wave"),
         helper.make_node("Gemm", ["c", "w2"], ["y"], name="fc2", transB=1)], "cos",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "cos.onnx"))
    repo = Repository(tmp_path / "repo")
    import_model(repo, tmp_path / "cos.onnx", "cos")
    with pytest.raises(InvalidInput, match=r"node 'wave' \(Cos\) cannot be converted to PyTorch.*"
                                           r"import its torch.export .pt2.*clip, prune-unstructured"):
        optimize(repo.root, "cos:1", recipe=[{"pass": "prune-structured"}], **FAST,
                 eval_data=Dataset({"x": np.ones((4, 4), np.float32)}, None, "ones"))
    assert repo.versions("cos") == [1]


def test_a_result_larger_than_its_parent_is_refused(tmp_path: Path) -> None:
    parent, new = tmp_path / "parent", tmp_path / "new"
    parent.mkdir(), new.mkdir()
    (parent / "model.onnx").write_bytes(b"x" * 100)
    (parent / "report.json").write_bytes(b"x" * 1000)  # reports are not the model
    (new / "model.onnx").write_bytes(b"x" * 101)
    assert model_bytes(parent) == 100 and model_bytes(new) == 101
    manifest = Manifest(name="cnn", version=1, format="onnx", files=[], signature=Signature(inputs=[], outputs=[]))
    with pytest.raises(InvalidInput, match="larger than cnn:1"):
        check_not_larger(manifest, parent, new, parse_recipe([{"pass": "low-rank", "energy": 0.9}]), "onnx")
    check_not_larger(manifest, parent, new, parse_recipe([{"pass": "export", "format": "onnx"}]), "onnx")  # asked for
    # another format's fixed costs differ (a .pt2 carries its graph): not compared
    check_not_larger(manifest, parent, new, parse_recipe([{"pass": "low-rank", "energy": 0.9}]), "torch-export")
    (parent / "original").mkdir()  # a kept original (the Keras file an import converted) is not the model
    (parent / "original" / "model.keras").write_bytes(b"x" * 5000)
    assert model_bytes(parent) == 100
