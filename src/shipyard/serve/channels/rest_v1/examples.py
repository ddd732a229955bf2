"""TF Serving's `:classify`, `:regress` and `/metadata` over shipyard's signatures.

classify / regress take {"examples": [{feature: value | [values]}], "context": {...}}: a feature is
an input by name, its values one row of it (a flat list is laid into the row's shape, as
tf.Example features are flat). classify answers {"result": [[[label, score], ...], ...]}: the
scores are the model's one float output of shape [-1, C] as it gives them (logits, for a model
that outputs logits), labelled by a BYTES output of the same shape if the model has one, else by
the class index ("0", "1", ...). regress answers {"result": [value, ...]} from one float output
of one value per example.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, shown
from shipyard.repository import Signature, TensorSpec
from shipyard.serve.channels.rest_v1.convert import tensor_of
from shipyard.serve.types import InferRequest, InferResponse, Route

EXAMPLES, CONTEXT, RESULT = "examples", "context", "result"
# V2 datatypes as TF's DataType names (GetModelMetadata's signature_def).
TF_DTYPES = {"BOOL": "DT_BOOL", "UINT8": "DT_UINT8", "UINT16": "DT_UINT16", "UINT32": "DT_UINT32",
             "UINT64": "DT_UINT64", "INT8": "DT_INT8", "INT16": "DT_INT16", "INT32": "DT_INT32",
             "INT64": "DT_INT64", "FP16": "DT_HALF", "FP32": "DT_FLOAT", "FP64": "DT_DOUBLE",
             "BF16": "DT_BFLOAT16", "BYTES": "DT_STRING"}
PREDICT_METHOD = "tensorflow/serving/predict"


def metadata(model: str, version: int, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """GetModelMetadataResponse as TF Serving writes it in JSON: one `serving_default` signature."""
    def tensors(specs: list[dict[str, Any]]) -> dict[str, Any]:
        return {s["name"]: {"name": s["name"], "dtype": TF_DTYPES.get(s["datatype"], "DT_INVALID"),
                            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in s["shape"]],
                                             "unknown_rank": False}}
                for s in specs}

    signature = {"inputs": tensors(inputs), "outputs": tensors(outputs), "method_name": PREDICT_METHOD}
    return {"model_spec": {"name": model, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}


def _row(spec: TensorSpec, value: Any, where: str) -> Any:
    """One example's feature as a row of the input: a flat list laid into the row's fixed shape."""
    row = spec.shape[1:]
    array = np.array(value, dtype=object)
    if list(array.shape) == row or -1 in row and array.ndim == len(row):
        return value
    size = int(np.prod(row)) if row else 1
    if -1 in row or array.size != size:
        raise InvalidInput(f"{where} has {array.size} values of shape {list(array.shape)}; input "
                           f"'{spec.name}' takes a row of shape {row}")
    return array.reshape(row).tolist()


def decode_examples(doc: Any, model: str, version: int | None, route: Route) -> InferRequest:
    if not isinstance(doc, dict) or not isinstance(doc.get(EXAMPLES), list) or not doc[EXAMPLES]:
        raise InvalidInput(f"request body must be a JSON object with a non-empty '{EXAMPLES}' list of "
                           "{feature: value} objects")
    context = doc.get(CONTEXT) or {}
    if not isinstance(context, dict):
        raise InvalidInput(f"'{CONTEXT}' must be an object of features shared by every example")
    sig: Signature = route.signature
    if not sig.batched:
        raise InvalidInput(f"model '{model}' does not batch (its inputs have no leading -1 dimension), so it "
                           "cannot take a list of examples; use :predict")
    names = [s.name for s in sig.inputs]
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, example in enumerate(doc[EXAMPLES]):
        if not isinstance(example, dict):
            raise InvalidInput(f"examples[{i}] must be an object of features, got {type(example).__name__}")
        both = sorted(set(example) & set(context))
        if both:
            raise InvalidInput(f"examples[{i}] repeats context features {shown(both)}; give each once")
        features = {**context, **example}
        if set(features) != set(names):
            raise InvalidInput(f"examples[{i}] has features {shown(sorted(features))}; model '{model}' takes {names}")
        for spec in sig.inputs:
            columns[spec.name].append(_row(spec, features[spec.name], f"examples[{i}] feature '{spec.name}'"))
    tensors = [tensor_of(spec, columns[spec.name]) for spec in sig.inputs]
    return InferRequest(model=model, version=version, inputs=tensors, route=route)


def scores_output(method: str, model: str, sig: Signature) -> TensorSpec:
    """The output that makes the method's answer, or a 400 (before inferring) saying why none does:
    classify takes the one float output of shape [-1, classes], regress the one float output of one
    value per example ([-1] or [-1, 1])."""
    floats = [o for o in sig.outputs if o.datatype.startswith(("FP", "BF"))]
    if method == "classify":
        fit = [o for o in floats if len(o.shape) == 2]
        need = "one float output of shape [-1, classes]"
    else:
        fit = [o for o in floats if o.shape[1:] in ([], [1])]
        need = "one float output of one value per example ([-1] or [-1, 1])"
    if len(fit) != 1:
        described = ", ".join(o.describe() for o in sig.outputs)
        raise InvalidInput(f":{method} needs a model with {need}; model '{model}' has {described}: use :predict")
    return fit[0]


def encode_result(method: str, response: InferResponse, sig: Signature) -> dict[str, Any]:
    outs = {t.name: t.data for t in response.outputs}
    scores = outs[scores_output(method, response.model, sig).name]
    if method == "regress":
        return {RESULT: scores.reshape(-1).astype(np.float64).tolist()}
    labels = next((outs[o.name] for o in sig.outputs if o.datatype == "BYTES" and len(o.shape) == 2), None)
    rows = []
    for i, row in enumerate(scores.astype(np.float64).tolist()):
        names = ([b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in labels[i]]
                 if labels is not None else [str(c) for c in range(len(row))])
        rows.append([[n, s] for n, s in zip(names, row, strict=False)])
    return {RESULT: rows}
