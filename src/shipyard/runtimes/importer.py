"""Importing a model file or folder into the repository as a new version."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, NotFound, UnsafeModel
from shipyard.repository import Lineage, Manifest, Repository, Signature, TensorSpec, check_model_name
from shipyard.runtimes import REGISTRY, Runtime, RuntimeOptions
from shipyard.runtimes.torch_sniff import is_pickle


def parse_tensor_spec(text: str) -> TensorSpec:
    """'pixels:FP32:-1,1,8,8' -> TensorSpec (as the CLI's --input/--output take it)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise InvalidInput(f"tensor spec {text!r} must look like NAME:DATATYPE:DIM,DIM (e.g. pixels:FP32:-1,1,8,8)")
    name, datatype, dims = parts
    try:
        shape = [int(d) for d in dims.split(",")] if dims.strip() else []
    except ValueError:
        raise InvalidInput(f"tensor spec {text!r}: dimensions must be integers, -1 for variable") from None
    try:
        return TensorSpec(name=name, datatype=datatype.upper(), shape=shape)
    except ValueError as e:
        raise InvalidInput(f"tensor spec {text!r}: {e}") from None


def merge_signature(found: Signature | None, inputs: list[TensorSpec] | None,
                    outputs: list[TensorSpec] | None, source: Path) -> Signature:
    """The signature read from the model, with the user's overrides replacing whole lists."""
    if found is None and (not inputs or not outputs):
        raise InvalidInput(
            f"{source} does not record its inputs and outputs; give them with "
            "--input NAME:DATATYPE:DIMS and --output NAME:DATATYPE:DIMS"
        )
    sig = Signature(
        inputs=inputs or (found.inputs if found else []),
        outputs=outputs or (found.outputs if found else []),
    )
    if found is not None:
        for label, given, real in (("inputs", inputs, found.inputs), ("outputs", outputs, found.outputs)):
            if given and len(given) != len(real):
                raise InvalidInput(
                    f"{source} has {len(real)} {label} ({', '.join(t.name for t in real)}); "
                    f"{len(given)} were given"
                )
    return sig


def detect(source: Path) -> type[Runtime]:
    for cls in REGISTRY.values():
        if cls.claims(source):
            return cls
    raise InvalidInput(
        f"{source} is not a format shipyard can import; expected an ONNX file (.onnx), a torch.export "
        "program (.pt2), a TorchScript file, a TFLite file (.tflite), a Hugging Face folder (config.json + "
        "safetensors), or (through `shipyard models import`) a Keras file (.keras, .h5), a SavedModel folder or "
        "an MLflow model folder"
    )


def _export_pickled_module(source: Path, inputs: list[TensorSpec] | None, dest: Path) -> Path:
    """With --trust-pickle: load a torch.save'd nn.Module and turn it into a torch.export program,
    so that the repository itself only ever holds files that load without unpickling code."""
    import torch
    from torch.export import Dim

    obj = torch.load(str(source), weights_only=False, map_location="cpu")
    if not isinstance(obj, torch.nn.Module):
        raise InvalidInput(
            f"{source} holds a {type(obj).__name__}, not a model (a state_dict has weights but no "
            "code): build the module, load the weights, and export it with torch.export"
        )
    if not inputs:
        raise InvalidInput(f"{source}: a pickled module records no input shapes; give --input NAME:DATATYPE:DIMS")
    from shipyard.tensors import numpy_dtype

    examples, dynamic = [], {}
    for spec in inputs:
        shape = [2 if d == -1 else d for d in spec.shape]
        examples.append(torch.from_numpy(np.zeros(shape, dtype=numpy_dtype(spec.datatype))))
        dynamic[spec.name] = {i: Dim.DYNAMIC for i, d in enumerate(spec.shape) if d == -1}
    program = torch.export.export(obj.eval(), tuple(examples), dynamic_shapes=list(dynamic.values()))
    out = dest / "model.pt2"
    torch.export.save(program, str(out))
    return out


def import_model(repo: Repository, source: str | Path, name: str, *,
                 inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                 trust_pickle: bool = False, metrics: dict[str, Any] | None = None,
                 steps: list[dict[str, Any]] | None = None, task: str | None = None) -> Manifest:
    """Publish `source` as the next version of `name`. `steps` are recorded as the lineage's
    recipe (what an importer did to the file before it came here: unwrapping, converting).
    `task` (shipyard.tasks) is stored in the manifest; without it, a task the signature or the
    output activation makes plain is stored, else it is inferred when the version is measured."""
    from shipyard import tasks

    check_model_name(name)
    tasks.check_name(task)
    source = Path(source)
    if not source.exists():
        raise NotFound(f"{source} does not exist")
    options = RuntimeOptions(trust_pickle=trust_pickle)
    with tempfile.TemporaryDirectory() as tmp:
        origin = source
        if is_pickle(source):
            if not trust_pickle:
                raise UnsafeModel(
                    f"{source} is a pickle file: loading it can run arbitrary code. Export the model "
                    "(torch.export or ONNX), or pass --trust-pickle if you trust where it came from"
                )
            source = _export_pickled_module(source, inputs, Path(tmp))
        cls = detect(source)
        signature = merge_signature(cls.inspect(source, options), inputs, outputs, origin)
        with repo.publish(name, cls.format, signature, Lineage(source=str(origin.resolve()), recipe=steps or []), metrics) as staging:
            staging.extra.update(cls.stage(source, staging.path, options))
            staging.task = task or tasks.from_signature(signature) or task_of_activation(source, signature)
        assert staging.manifest is not None
        return staging.manifest


def task_of_activation(source: Path, signature: Signature) -> str | None:
    """The task the output activation makes plain (ONNX graphs and torch.export programs): a
    sigmoid (binary for one unit, multilabel for several) or a softmax (multiclass); None for
    anything else, which is then inferred when the version is measured."""
    if not signature.outputs:
        return None
    units = signature.outputs[0].shape[-1] if signature.outputs[0].shape else -1
    op = _last_op_onnx(source, signature) if source.suffix == ".onnx" else \
        _last_op_program(source) if source.suffix == ".pt2" else None
    if op == "sigmoid":
        return "binary" if units == 1 else "multilabel" if units > 1 else None
    return "multiclass" if op == "softmax" and units != 1 else None


def _last_op_onnx(source: Path, signature: Signature) -> str | None:
    import onnx

    graph = onnx.load(str(source), load_external_data=False).graph
    last = next((n for n in graph.node if signature.outputs[0].name in n.output), None)
    return None if last is None else {"Sigmoid": "sigmoid", "Softmax": "softmax"}.get(last.op_type)


def _last_op_program(source: Path) -> str | None:
    import torch

    graph = torch.export.load(str(source)).graph
    out = next((n for n in graph.nodes if n.op == "output"), None)
    first = out.args[0][0] if out is not None and out.args and out.args[0] else None
    name = str(getattr(first, "target", ""))
    return "sigmoid" if "sigmoid" in name else "softmax" if "softmax" in name else None
