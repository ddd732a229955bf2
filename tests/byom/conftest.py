"""Models users bring, made here with the real libraries (random weights, seeded): the Keras
model of issue 14 saved as .keras, .h5 and a SavedModel, a .tflite file by TF's converter, and
the sample inputs with Keras's own outputs on them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class KerasFiles:
    keras: Path
    h5: Path
    saved_model: Path
    tflite: Path
    calibration: Path  # .npz with 'features'
    x: np.ndarray  # sample inputs, [16, 100]
    expected: np.ndarray  # Keras predict on x, [16, 1]


def binary_mlp() -> object:
    """Dense(128, relu) -> Dense(64, relu) -> Dense(32, relu) -> Dense(1, sigmoid), input 100."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((100,), name="features"),
        keras.layers.Dense(128, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(64, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(32, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])


@pytest.fixture(scope="session")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> KerasFiles:
    import tensorflow as tf

    base = tmp_path_factory.mktemp("keras")
    model = binary_mlp()
    model.save(base / "binary.keras")
    model.save(base / "binary.h5")
    model.export(str(base / "binary_saved_model"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(base / "binary_saved_model"))
    (base / "binary.tflite").write_bytes(converter.convert())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 100)).astype(np.float32)
    cal = rng.standard_normal((128, 100)).astype(np.float32)
    np.savez(base / "calibration.npz", features=cal)
    return KerasFiles(base / "binary.keras", base / "binary.h5", base / "binary_saved_model", base / "binary.tflite",
                      base / "calibration.npz", x, model.predict(x, verbose=0))  # type: ignore[attr-defined]
