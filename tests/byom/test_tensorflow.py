"""Keras, SavedModel and TFLite sources end to end with the real TensorFlow, tf2onnx, LiteRT and
ONNX Runtime: import, export to TFLite (fp32 and int8), TFLite -> ONNX, and serving through a real
server over KServe V2 and TF Serving V1 REST, each compared with Keras's own outputs.

Tolerances: fp32 paths (tf2onnx's ONNX, TFLite fp32, TFLite -> ONNX) within 1e-5 of Keras on
sigmoid outputs in [0, 1] (the same fp32 math in other kernels; seen: 1e-7); full-integer int8
TFLite within 0.05 (int8 rounding of every activation; seen: ~0.01)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.config import ModelConfig
from shipyard.errors import InvalidInput
from shipyard.optimize import optimize
from shipyard.optimize.sources import import_model
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from tests.byom.conftest import KerasFiles
from tests.fixtures import ServerProcess

FP32_ATOL = 1e-5
INT8_ATOL = 0.05
FAST = {"threads": 1, "latency_budget_s": 0.05}


@pytest.fixture(scope="module")
def tf_repo(keras_files: KerasFiles, tmp_path_factory: pytest.TempPathFactory) -> Repository:
    """keras:1 (.keras), h5:1, sm:1 (SavedModel), keras:2 TFLite fp32, keras:3 TFLite int8,
    lite:1 (the .tflite file as it is), lite:2 (its ONNX conversion)."""
    repo = Repository(tmp_path_factory.mktemp("byom") / "repo")
    import_model(repo, keras_files.keras, "keras")
    import_model(repo, keras_files.h5, "h5")
    import_model(repo, keras_files.saved_model, "sm")
    data = str(keras_files.calibration)
    optimize(repo.root, "keras:1", recipe=[{"pass": "tflite"}], eval_data=data, **FAST)
    optimize(repo.root, "keras:1", recipe=[{"pass": "tflite", "quantize": "int8"}], eval_data=data,
             calibrate=data, **FAST)
    import_model(repo, keras_files.tflite, "lite")
    optimize(repo.root, "lite:1", recipe=[{"pass": "tflite-to-onnx"}], eval_data=data, **FAST)
    return repo


@pytest.fixture(scope="module")
def tf_server(tf_repo: Repository) -> Iterator[ServerProcess]:
    for name in ("keras", "lite"):
        tf_repo.write_model_config(name, ModelConfig(version_policy="all"))
    proc = ServerProcess(tf_repo.root)
    yield proc
    assert proc.stop() == 0, proc.output()


def _run(repo: Repository, name: str, version: int, x: np.ndarray) -> np.ndarray:
    m = repo.manifest(name, version)
    rt = runtime_for(m, repo.path(name, version), RuntimeOptions())
    rt.load()
    try:
        return rt.infer({"features": x}, ["output_0"])["output_0"]
    finally:
        rt.unload()


@pytest.mark.parametrize(("name", "kind", "original"), [
    ("keras", "keras", "original/binary.keras"), ("h5", "h5", "original/binary.h5"),
    ("sm", "saved-model", "original/saved_model")])
def test_import_reads_the_signature_converts_and_keeps_the_original(
        tf_repo: Repository, keras_files: KerasFiles, name: str, kind: str, original: str) -> None:
    m = tf_repo.manifest(name, 1)
    assert m.format == "onnx"
    assert [(t.name, t.datatype, t.shape) for t in m.signature.inputs] == [("features", "FP32", [-1, 100])]
    assert [(t.name, t.datatype, t.shape) for t in m.signature.outputs] == [("output_0", "FP32", [-1, 1])]
    step = m.lineage.recipe[0]
    assert step["pass"] == "import" and step["from"] == kind and step["original"] == original
    assert step["converter"].startswith("tf2onnx ") and step["parity"]["max_abs_diff"] <= step["parity"]["tolerance"]
    assert (tf_repo.path(name, 1) / original).exists()
    assert any(f.path.startswith("original/") for f in m.files)  # checksummed like the model itself
    # ... but not counted in its size: the version's size is the ONNX file it serves
    assert m.size_bytes == (tf_repo.path(name, 1) / "model.onnx").stat().st_size
    assert m.task == "binary"  # the converted graph ends in a sigmoid over one unit
    np.testing.assert_allclose(_run(tf_repo, name, 1, keras_files.x), keras_files.expected, atol=FP32_ATOL)


def test_tflite_exports_are_checked_and_smaller(tf_repo: Repository, keras_files: KerasFiles) -> None:
    fp32, int8 = tf_repo.manifest("keras", 2), tf_repo.manifest("keras", 3)
    assert fp32.format == int8.format == "tflite"
    assert fp32.lineage.recipe == [{"pass": "tflite", "quantize": "fp32", "calibration_samples": 256,
                                    "atol": None, "rtol": None}]
    report = json.loads((tf_repo.path("keras", 3) / "report.json").read_text())
    assert any("full-integer int8" in n for n in report["notes"])
    assert any(n.startswith("TFLite int8 checked against its parent") for n in report["notes"])
    size = {m.version: next(f.size for f in m.files if f.path == "model.tflite") for m in (fp32, int8)}
    assert size[3] < size[2] / 2.5  # int8 weights: a quarter of fp32's bytes, plus scales and the graph
    np.testing.assert_allclose(_run(tf_repo, "keras", 2, keras_files.x), keras_files.expected, atol=FP32_ATOL)
    got = _run(tf_repo, "keras", 3, keras_files.x)
    np.testing.assert_allclose(got, keras_files.expected, atol=INT8_ATOL)
    assert not np.array_equal(got, keras_files.expected)  # it really is the int8 model


def test_a_tflite_file_imports_as_it_is_and_converts_to_onnx(tf_repo: Repository, keras_files: KerasFiles) -> None:
    lite, onnx = tf_repo.manifest("lite", 1), tf_repo.manifest("lite", 2)
    assert lite.format == "tflite" and onnx.format == "onnx"
    assert [t.name for t in lite.signature.inputs] == ["features"]
    assert lite.signature.inputs[0].shape == [-1, 100]
    tflite_out = _run(tf_repo, "lite", 1, keras_files.x)
    np.testing.assert_allclose(tflite_out, keras_files.expected, atol=FP32_ATOL)
    np.testing.assert_allclose(_run(tf_repo, "lite", 2, keras_files.x), tflite_out, atol=FP32_ATOL)


def _v2(server: ServerProcess, model: str, version: int, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = httpx.post(f"{server.url}/v2/models/{model}/versions/{version}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "output_0"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _v1(server: ServerProcess, model: str, version: int, x: np.ndarray) -> np.ndarray:
    r = httpx.post(f"{server.url}/v1/models/{model}/versions/{version}:predict", json={"instances": x.tolist()},
                   timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["predictions"], dtype=np.float32).reshape(len(x), -1)


@pytest.mark.parametrize(("model", "version", "atol"), [
    ("keras", 1, FP32_ATOL), ("h5", 1, FP32_ATOL), ("sm", 1, FP32_ATOL), ("keras", 2, FP32_ATOL),
    ("keras", 3, INT8_ATOL), ("lite", 1, FP32_ATOL), ("lite", 2, FP32_ATOL)])
def test_served_over_v2_and_v1_like_keras(tf_server: ServerProcess, keras_files: KerasFiles, model: str,
                                          version: int, atol: float) -> None:
    x, expected = keras_files.x, keras_files.expected
    np.testing.assert_allclose(_v2(tf_server, model, version, x), expected, atol=atol)
    np.testing.assert_allclose(_v1(tf_server, model, version, x), expected, atol=atol)
    np.testing.assert_allclose(_v2(tf_server, model, version, x[:1]), expected[:1], atol=atol)  # batch 1 too


def test_int8_tflite_needs_calibration_data(tf_repo: Repository, keras_files: KerasFiles) -> None:
    with pytest.raises(InvalidInput, match="--calibrate"):
        optimize(tf_repo.root, "keras:1", recipe=[{"pass": "tflite", "quantize": "int8"}],
                 eval_data=str(keras_files.calibration), **FAST)


def test_tflite_pass_needs_an_imported_tensorflow_model(tf_repo: Repository, keras_files: KerasFiles) -> None:
    with pytest.raises(InvalidInput, match="TensorFlow model a version was imported from"):
        optimize(tf_repo.root, "lite:2", recipe=[{"pass": "tflite"}], eval_data=str(keras_files.calibration), **FAST)


def test_corrupt_files_get_an_error_naming_them(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    for name in ("broken.keras", "broken.tflite", "broken.h5"):
        (tmp_path / name).write_bytes(b"not a model at all" * 10)
        with pytest.raises(InvalidInput, match=name.replace(".", r"\.")) as info:
            import_model(repo, tmp_path / name, "broken")
        assert "not a readable" in str(info.value)
    assert repo.versions("broken") == []


def test_the_tflite_runtime_serves_concurrent_requests(tf_repo: Repository, keras_files: KerasFiles) -> None:
    """LiteRT interpreters are not thread-safe: the runtime's pool gives each request its own."""
    from concurrent.futures import ThreadPoolExecutor

    m = tf_repo.manifest("keras", 2)
    rt = runtime_for(m, tf_repo.path("keras", 2), RuntimeOptions())
    rt.load()
    rows = [keras_files.x[i: i + 1 + i % 4] for i in range(12)]  # batch sizes 1..4: resizes interleave
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda r: rt.infer({"features": r}, ["output_0"])["output_0"], rows * 20))
    for i, out in enumerate(outs):
        start = i % 12
        np.testing.assert_allclose(out, keras_files.expected[start: start + 1 + start % 4], atol=FP32_ATOL)
    rt.unload()


def test_a_saved_model_with_two_inputs_and_two_outputs(tmp_path: Path, repo: Repository) -> None:
    """A hand-written tf.Module (no Keras): the signature's keys name the version's tensors."""
    import tensorflow as tf

    class Pair(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="left"),
                                      tf.TensorSpec([None, 3], tf.float32, name="right")])
        def serve(self, left: tf.Tensor, right: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": tf.matmul(left, self.w), "total": tf.reduce_sum(left * right, axis=1)}

    pair = Pair()
    tf.saved_model.save(pair, str(tmp_path / "pair"), signatures={"serving_default": pair.serve})
    m = import_model(repo, tmp_path / "pair", "pair")
    assert sorted(t.name for t in m.signature.inputs) == ["left", "right"]
    assert {t.name: t.shape for t in m.signature.outputs} == {"scores": [-1, 2], "total": [-1]}
    rng = np.random.default_rng(1)
    left, right = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(2))
    expected = pair.serve(left, right)
    rt = runtime_for(m, repo.path("pair", 1), RuntimeOptions())
    rt.load()
    got = rt.infer({"left": left, "right": right}, ["scores", "total"])
    for k in ("scores", "total"):
        np.testing.assert_allclose(got[k], expected[k].numpy(), atol=FP32_ATOL)
