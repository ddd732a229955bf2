"""MLflow model folders (an `MLmodel` file, as `mlflow.<flavor>.save_model` or `log_model` write
them), read with the `mlflow` package (no tracking server needed; extra `shipyard[mlflow]`). A
folder imports like the file it wraps; the flavor, run id and MLflow signature go into the
lineage, and the signature supplies the tensor shapes a file does not record (TorchScript)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInput
from shipyard.repository import TensorSpec
from shipyard.runtimes.extras import require
from shipyard.tensors import v2_datatype

# The flavors shipyard reads, in the order it prefers them when a folder has several; each names
# the key of its flavor block that holds the model's path.
FLAVORS = {"onnx": "data", "pytorch": "model_data", "keras": "data", "tensorflow": "data",
           "transformers": "model_binary"}


def is_mlflow(source: Path) -> bool:
    return source.is_dir() and (source / "MLmodel").is_file()


def _specs(schema: Any, prefix: str) -> list[TensorSpec] | None:
    """An MLflow tensor schema as tensor specs (None for column schemas, which name no shapes)."""
    if schema is None or not schema.is_tensor_spec():
        return None
    import numpy as np

    out = []
    for i, spec in enumerate(schema.inputs):
        name = spec.name or (f"{prefix}_{i}" if len(schema.inputs) > 1 else prefix)
        out.append(TensorSpec(name=name, datatype=v2_datatype(np.dtype(spec.type)), shape=list(spec.shape)))
    return out


def unwrap(source: Path, workdir: Path) -> tuple[Path, dict[str, Any], list[TensorSpec] | None]:
    """(the wrapped model file or folder, the lineage step, the MLflow signature's input specs).
    A transformers model whose tokenizer MLflow keeps apart (`components/`) is put back together
    in `workdir`, as a Hugging Face folder."""
    require("mlflow", "mlflow", f"importing the MLflow model folder {source.name}")
    from mlflow.models import Model

    try:
        model = Model.load(str(source))
    except Exception as e:
        raise InvalidInput(f"{source / 'MLmodel'} is not a readable MLflow model file: {str(e).splitlines()[0][:200]}") from None
    flavor = next((f for f in FLAVORS if f in model.flavors), None)
    if flavor is None:
        raise InvalidInput(f"{source} is an MLflow model with flavors {sorted(model.flavors)}; shipyard imports "
                           f"the {', '.join(FLAVORS)} flavors (save the model with one of them)")
    conf = model.flavors[flavor]
    inner = _wrapped(source, flavor, conf)
    wrapped = str(inner.relative_to(source))
    components = [c for c in conf.get("components") or [] if (source / "components" / c).is_dir()]
    if flavor == "transformers" and components and inner.is_dir():
        merged = workdir / "transformers"
        shutil.copytree(inner, merged)
        for c in components:
            for f in (source / "components" / c).iterdir():
                if f.is_file() and not (merged / f.name).exists():
                    shutil.copyfile(f, merged / f.name)
        inner = merged
        wrapped = " + ".join([wrapped, *(f"components/{c}" for c in components)])
    sig = model.signature
    step: dict[str, Any] = {"pass": "import", "from": "mlflow", "flavor": flavor, "run_id": model.run_id,
                            "model_uuid": getattr(model, "model_uuid", None),
                            "mlflow_signature": json.loads(json.dumps(sig.to_dict())) if sig else None,
                            "wrapped": wrapped}
    return inner, step, _specs(sig.inputs, "input") if sig else None


def _wrapped(source: Path, flavor: str, conf: dict[str, Any]) -> Path:
    from shipyard.optimize.sources.tensorflow import tf_kind
    from shipyard.runtimes import REGISTRY
    from shipyard.runtimes.torch_sniff import is_pickle

    def importable(p: Path) -> bool:  # a pickle (mlflow's older pytorch format) needs --trust-pickle, as any
        return p.exists() and (tf_kind(p) is not None or is_pickle(p) or any(cls.claims(p) for cls in REGISTRY.values()))

    where = conf.get(FLAVORS[flavor]) or ("model" if flavor == "transformers" else "data")
    base = source / where
    if flavor == "transformers" and not base.exists():
        base = source / "model"
    for candidate in [base, *(sorted(base.iterdir()) if base.is_dir() else [])]:
        if importable(candidate):
            return candidate
    raise InvalidInput(f"{source}: the {flavor} flavor's model ({where}) holds nothing shipyard imports; "
                       "expected an ONNX, torch.export (.pt2), Keras, SavedModel or Hugging Face model there")
