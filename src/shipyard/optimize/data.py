"""Evaluation, calibration and training data, named the same way everywhere:

- a path to an `.npz` holding one array per model input (by input name) and optionally `labels`;
- `zoo:digits` (the demo's held-out test split) or `zoo:digits-train` (its training split);
- from Python, a callable returning a `Dataset`, a dict of arrays, or `(dict, labels)`.

Without labels, accuracy means agreement with the parent version's predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.repository import Manifest, Signature
from shipyard.tensors import numpy_dtype


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int, start: int = 0) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[start : start + n]) for k, v in self.inputs.items()}

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [self.take(size, i) for i in range(0, len(self), size)]


DataSpec = str | Path | Dataset | Callable[[], Any] | None


def _zoo(name: str) -> Dataset:
    if name in ("digits", "digits-test", "digits-train"):
        from shipyard.zoo import digits

        split = digits.load("train" if name.endswith("train") else "test")
        return Dataset({"pixels": split.pixels}, split.labels, f"zoo:{name}")
    raise InvalidInput(f"unknown built-in data 'zoo:{name}'; known: zoo:digits, zoo:digits-train")


def _from_object(obj: Any, name: str) -> Dataset:
    if isinstance(obj, Dataset):
        return obj
    labels = None
    if isinstance(obj, tuple) and len(obj) == 2:
        obj, labels = obj
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"data {name} gave a {type(obj).__name__}; return a Dataset, a dict of arrays by input "
            "name, or (dict, labels)")
    return Dataset({k: np.asarray(v) for k, v in obj.items()},
                   None if labels is None else np.asarray(labels), name)


def load_data(spec: DataSpec, role: str = "eval") -> Dataset | None:
    """Resolve a data spec; `role` ('eval', 'calibrate', 'train') only makes messages clearer."""
    if spec is None:
        return None
    if isinstance(spec, Dataset):
        return spec
    if callable(spec):
        return _from_object(spec(), f"from {getattr(spec, '__name__', 'callable')}()")
    text = str(spec)
    if text.startswith("zoo:"):
        return _zoo(text[4:])
    path = Path(text)
    if path.suffix != ".npz":
        raise InvalidInput(
            f"--{role} {text!r} is neither an .npz file nor a built-in split; use a file.npz "
            "with one array per input (plus optional 'labels') or zoo:digits / zoo:digits-train")
    if not path.is_file():
        raise InvalidInput(f"--{role} file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise InvalidInput(f"--{role} file {path} is not a readable .npz (no pickled arrays): {e}") from None
    labels = arrays.pop("labels", None)
    return Dataset(arrays, labels, str(path))


def check_data(data: Dataset, signature: Signature, role: str = "eval") -> Dataset:
    """Names, datatypes and shapes against the signature; the message says expected vs got."""
    expected = {t.name: t for t in signature.inputs}
    missing = sorted(set(expected) - set(data.inputs))
    unknown = sorted(set(data.inputs) - set(expected))
    if missing or unknown:
        raise InvalidInput(
            f"{role} data {data.name} has arrays {sorted(data.inputs)}; the model's inputs are "
            f"{sorted(expected)}" + (f" (missing {missing})" if missing else "")
            + (f" (not inputs: {unknown})" if unknown else "")
            + "; name the arrays after the inputs, and the targets 'labels'")
    out: dict[str, np.ndarray] = {}
    n = None
    for name, spec in expected.items():
        arr = data.inputs[name]
        want = numpy_dtype(spec.datatype)
        if arr.dtype != want:
            same_kind = np.can_cast(arr.dtype, want, casting="same_kind")
            if not same_kind:
                raise InvalidInput(
                    f"{role} array '{name}' is {arr.dtype}; the model expects {spec.datatype}")
            arr = arr.astype(want)
        dims = spec.shape
        if arr.ndim != len(dims) or any(d not in (-1, a) for d, a in zip(dims[1:], arr.shape[1:], strict=False)):
            raise InvalidInput(
                f"{role} array '{name}' has shape {list(arr.shape)}; the model expects {dims} "
                "(-1: any size; the first dimension counts samples)")
        if n is not None and len(arr) != n:
            raise InvalidInput(f"{role} arrays have different numbers of samples ({n} and {len(arr)})")
        n = len(arr)
        out[name] = np.ascontiguousarray(arr)
    if n == 0:
        raise InvalidInput(f"{role} data {data.name} holds no samples")
    if data.labels is not None and len(data.labels) != n:
        raise InvalidInput(
            f"{role} data {data.name}: 'labels' has {len(data.labels)} entries for {n} samples")
    return Dataset(out, data.labels, data.name)


def resolve_data(parent: Manifest, eval_data: DataSpec, calibrate: DataSpec,
                 train: DataSpec) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """Load and check the three data sets; a zoo model defaults to its own splits."""
    zoo = parent.extra.get("zoo")
    if zoo and eval_data is None:
        eval_data, calibrate, train = f"zoo:{zoo}", calibrate or f"zoo:{zoo}-train", train or f"zoo:{zoo}-train"
    ev = load_data(eval_data, "eval")
    if ev is None:
        raise InvalidInput(f"{parent.name}:{parent.version} needs eval data: --eval file.npz (one array per "
                           "input, plus optional 'labels') or a built-in split such as zoo:digits")
    sig = parent.signature
    cal = load_data(calibrate, "calibrate")
    tr = load_data(train, "train")
    return (check_data(ev, sig, "eval"), check_data(cal, sig, "calibrate") if cal is not None else None,
            check_data(tr, sig, "train") if tr is not None else None)


def synthetic(signature: Signature, n: int, seed: int = 0, high: int = 100) -> dict[str, np.ndarray]:
    """`n` made-up rows for each input (free dimensions 8): standard normal floats, integers in
    [0, high); for parity checks and samples when no data is given."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in signature.inputs:
        shape = [n if i == 0 else (8 if d == -1 else d) for i, d in enumerate(t.shape)]
        dtype = numpy_dtype(t.datatype)
        out[t.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                       else rng.integers(0, high, shape).astype(dtype))
    return out
