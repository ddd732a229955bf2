"""Importing what users bring: the files the runtimes serve as they are (`shipyard.runtimes.importer`),
plus the sources that are unwrapped or converted first, each checked like every conversion:
TensorFlow / Keras models (to ONNX by tf2onnx, `tensorflow.py`) and MLflow model folders (`mlflow.py`).
`shipyard models import` comes here."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from shipyard.errors import NotFound
from shipyard.repository import Lineage, Manifest, Repository, TensorSpec, check_model_name
from shipyard.runtimes import importer
from shipyard.runtimes.importer import merge_signature


def import_model(repo: Repository, source: str | Path, name: str, *,
                 inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                 trust_pickle: bool = False, metrics: dict[str, Any] | None = None,
                 steps: list[dict[str, Any]] | None = None, task: str | None = None) -> Manifest:
    """Publish `source` (any format `shipyard models import` takes) as the next version of `name`;
    `task` as `runtimes.importer.import_model` takes it."""
    from shipyard import tasks
    from shipyard.optimize.sources import mlflow, tensorflow

    check_model_name(name)
    tasks.check_name(task)
    source = Path(source)
    if not source.exists():
        raise NotFound(f"{source} does not exist")
    steps = list(steps or [])
    if mlflow.is_mlflow(source):
        with tempfile.TemporaryDirectory(prefix="shipyard-mlflow-") as tmp:
            inner, step, specs = mlflow.unwrap(source, Path(tmp))
            # The MLflow signature's shapes stand in where the file records none (TorchScript, pickles).
            if inputs is None and specs is not None and _records_no_signature(inner):
                inputs = specs
            return import_model(repo, inner, name, inputs=inputs, outputs=outputs, trust_pickle=trust_pickle,
                                metrics=metrics, steps=[*steps, step], task=task)
    if tensorflow.tf_kind(source) is not None:
        with tempfile.TemporaryDirectory(prefix="shipyard-import-") as tmp:
            staged = Path(tmp) / "converted"
            staged.mkdir()
            found, step, extra = tensorflow.convert(source, staged, Path(tmp))
            signature = merge_signature(found, inputs, outputs, source)
            lineage = Lineage(source=str(source.resolve()), recipe=[*steps, step])
            with repo.publish(name, "onnx", signature, lineage, metrics) as staging:
                for p in staged.iterdir():
                    shutil.move(str(p), str(staging.path / p.name))
                staging.extra.update(extra)
                converted = next(staging.path.glob("*.onnx"), None)
                staging.task = task or tasks.from_signature(signature) or (
                    importer.task_of_activation(converted, signature) if converted is not None else None)
            assert staging.manifest is not None
            return staging.manifest
    return importer.import_model(repo, source, name, inputs=inputs, outputs=outputs, trust_pickle=trust_pickle,
                                 metrics=metrics, steps=steps, task=task)


def _records_no_signature(source: Path) -> bool:
    """A pickled module or a TorchScript file: the formats whose files record no tensor shapes."""
    from shipyard.runtimes.torch_sniff import is_pickle, zip_kind

    return source.is_file() and (is_pickle(source) or zip_kind(source) == "torchscript")


__all__ = ["import_model"]
