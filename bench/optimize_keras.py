"""The Keras rows of bench/optimize.py (issue 14): what a TensorFlow user has, beside shipyard.

  keras-mlp  Dense 128 relu -> 64 relu -> 32 relu -> 1 sigmoid, input 100, trained here on a
             synthetic binary task (labels: the sign of a fixed random projection); accuracy at 0.5
  keras-cnn  Conv 16 3x3 -> maxpool 2 -> conv 32 3x3 -> dense 64 -> 10 on sklearn's digits
             (8x8x1, NHWC); accuracy on the held-out split

Each as Keras `predict` (the anchor a TF user has; batch 1 and 32) and a direct call of the
model, TFLite fp32 and TFLite
full-integer int8 by TF's own TFLiteConverter run by LiteRT's interpreter (what a TF user does
without shipyard), and shipyard's versions: the imported ONNX (tf2onnx) and its int8-static
preset, measured by the runtime that serves them. Accuracy is computed here for every row from
its outputs (threshold for the binary model, argmax for the CNN), the same way for all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _mlp_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 100)).astype(np.float32)
    w = rng.standard_normal(100).astype(np.float32)
    y = (x @ w + 0.5 * rng.standard_normal(6000) > 0).astype(np.int64)
    return x[:5000], y[:5000], x[5000:], y[5000:]


def _digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from shipyard.zoo import digits

    train, test = digits.load("train"), digits.load("test")
    nhwc = lambda p: np.ascontiguousarray(p.transpose(0, 2, 3, 1))  # noqa: E731 - [N,1,8,8] -> [N,8,8,1]
    return nhwc(train.pixels), train.labels, nhwc(test.pixels), test.labels


def build(kind: str) -> tuple[Any, str, tuple[np.ndarray, ...]]:
    """(trained Keras model, input name, (x_train, y_train, x_test, y_test))."""
    import keras

    keras.utils.set_random_seed(0)
    if kind == "keras-mlp":
        data, name = _mlp_data(), "features"
        model = keras.Sequential([keras.Input((100,), name=name), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(64, activation="relu"), keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy")
        epochs = 5
    else:
        data, name = _digits_data(), "pixels"
        model = keras.Sequential([keras.Input((8, 8, 1), name=name),
                                  keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                                  keras.layers.MaxPooling2D(2),
                                  keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                                  keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        epochs = 30
    model.fit(data[0], data[1], epochs=epochs, batch_size=64, verbose=0)
    return model, name, data


def accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    pred = (out[:, 0] > 0.5).astype(np.int64) if out.shape[-1] == 1 else out.argmax(-1)
    return float((pred == labels).mean())


def _latency(call: Any, x: np.ndarray, budget: float) -> dict[str, float]:
    from shipyard.optimize.evaluate import latency_ms

    out = {}
    for b in (1, 32):
        batch = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])))
        out[f"latency_b{b}_p50_ms"] = latency_ms(lambda v=batch: call(v), budget_s=budget, warmup=5, iterations=200)["p50"]
    return out


def _tflite(saved: Path, out: Path, x_cal: np.ndarray | None) -> Path:
    import warnings

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if x_cal is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x_cal[i: i + 1]] for i in range(len(x_cal)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.write_bytes(converter.convert())
    return out


def _litert(path: Path, threads: int) -> Any:
    """A plain LiteRT interpreter call, resizing to the batch when it changes (what a user writes)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def call(x: np.ndarray) -> np.ndarray:
        if shape[0] != x.shape:
            it.resize_tensor_input(i, list(x.shape))
            it.allocate_tensors()
            shape[0] = x.shape
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)
    return call


def _shipyard(repo: Any, name: str, version: int, threads: int) -> tuple[Any, Path]:
    from shipyard.runtimes import RuntimeOptions, runtime_for

    m = repo.manifest(name, version)
    rt = runtime_for(m, repo.path(name, version), RuntimeOptions(threads=threads))
    rt.load()
    inp, out = m.signature.inputs[0].name, m.signature.outputs[0].name
    main = next(f for f in m.files if f.path.startswith("model."))
    return (lambda x: rt.infer({inp: x}, [out])[out]), repo.path(name, version) / main.path


def bench_keras(kind: str, work: Path, budget: float, threads: int) -> list[dict[str, Any]]:
    from shipyard.optimize.data import Dataset
    from shipyard.optimize.runner import optimize
    from shipyard.optimize.sources import import_model
    from shipyard.repository import Repository

    work.mkdir(parents=True, exist_ok=True)
    model, name, (x_train, _, x_test, y_test) = build(kind)
    source = work / f"{kind}.keras"
    model.save(source)
    saved = work / "saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    cal = x_train[:256]
    measured: list[tuple[str, Any, int]] = [
        ("Keras predict (TF)", lambda x: model.predict(x, verbose=0), source.stat().st_size),
        # predict builds a tf.data pipeline per call; calling the model is the cheapest Keras path.
        ("Keras model(x) (TF eager)", lambda x: model(x, training=False).numpy(), source.stat().st_size)]
    for variant, path in (("TFLite fp32 (TF converter, LiteRT)", _tflite(saved, work / "fp32.tflite", None)),
                          ("TFLite int8 (TF converter, LiteRT)", _tflite(saved, work / "int8.tflite", cal))):
        measured.append((variant, _litert(path, threads), path.stat().st_size))
    repo = Repository(work / "repo")
    import_model(repo, source, kind)
    data = Dataset({name: x_test}, None, f"{kind} test")
    calib = Dataset({name: cal}, None, f"{kind} train[:256]")
    optimize(repo.root, f"{kind}:1", preset_name="int8-static", eval_data=data, calibrate=calib,
             threads=threads, latency_budget_s=min(budget, 0.5))
    optimize(repo.root, f"{kind}:1", recipe=[{"pass": "tflite", "quantize": "int8"}], eval_data=data,
             calibrate=calib, threads=threads, latency_budget_s=min(budget, 0.5))
    for variant, version in (("shipyard onnx fp32 (import, tf2onnx)", 1), ("shipyard int8-static (ONNX)", 2),
                             ("shipyard --to tflite-int8", 3)):
        call, path = _shipyard(repo, kind, version, threads)
        measured.append((variant, call, path.stat().st_size))
    rows = []
    for variant, call, size in measured:
        rows.append({"model": kind, "variant": variant, "size_bytes": size,
                     "accuracy": accuracy(np.concatenate([call(x_test[i: i + 32]) for i in range(0, len(x_test), 32)]),
                                          y_test),
                     **_latency(call, x_test, budget)})
    anchor, tfl8 = rows[0], rows[3]
    for r in rows:
        for b in (1, 32):
            k = f"latency_b{b}_p50_ms"
            r[f"speedup_b{b}_vs_torch"] = anchor[k] / r[k]  # the markdown's 'vs eager' column: Keras predict here
            r[f"speedup_b{b}_vs_tflite_int8"] = tfl8[k] / r[k]
        r["size_vs_torch"] = r["size_bytes"] / anchor["size_bytes"]
        r["accuracy_drop_pt"] = 100 * (anchor["accuracy"] - r["accuracy"])
    return rows
