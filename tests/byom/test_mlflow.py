"""MLflow model folders written by mlflow itself (`mlflow.<flavor>.save_model`) for the flavors
whose library is installed here: onnx, keras (and tensorflow), pytorch. Each imports like the file
it wraps, with the flavor, run id and MLflow signature in the lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.errors import InvalidInput
from shipyard.optimize.sources import import_model
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from tests.byom.conftest import KerasFiles, binary_mlp
from tests.fixtures import export_onnx

RUN_ID = "0123456789abcdef0123456789abcdef"


def _signature(x: np.ndarray, y: np.ndarray) -> object:
    from mlflow.models import infer_signature

    return infer_signature(x, y)


def _run(repo: Repository, name: str, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    m = repo.manifest(name)
    rt = runtime_for(m, repo.path(name, m.version), RuntimeOptions())
    rt.load()
    try:
        return rt.infer(x, [t.name for t in m.signature.outputs])
    finally:
        rt.unload()


def test_onnx_flavor(tmp_path: Path, repo: Repository) -> None:
    import mlflow.onnx
    import onnx
    from mlflow.models import Model

    linear = torch.nn.Linear(4, 2)
    path = export_onnx(linear, tmp_path / "linear.onnx", {"x": torch.zeros(2, 4)}, ["y"])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = linear(torch.from_numpy(x)).detach().numpy()
    mlflow.onnx.save_model(onnx.load(str(path)), str(tmp_path / "mlflow-onnx"), pip_requirements=[],
                           mlflow_model=Model(run_id=RUN_ID), signature=_signature(x, expected))
    m = import_model(repo, tmp_path / "mlflow-onnx", "lin")
    assert m.format == "onnx"
    step = m.lineage.recipe[0]
    assert (step["from"], step["flavor"], step["run_id"], step["wrapped"]) == ("mlflow", "onnx", RUN_ID, "model.onnx")
    assert "float32" in step["mlflow_signature"]["inputs"] and "-1, 4" in step["mlflow_signature"]["inputs"]
    np.testing.assert_allclose(_run(repo, "lin", {"x": x})["y"], expected, atol=1e-6)


def test_keras_flavor_is_converted_like_a_keras_file(tmp_path: Path, repo: Repository,
                                                     keras_files: KerasFiles) -> None:
    import mlflow.keras

    mlflow.keras.save_model(binary_mlp(), str(tmp_path / "mlflow-keras"), pip_requirements=[])
    m = import_model(repo, tmp_path / "mlflow-keras", "k")
    assert m.format == "onnx"
    unwrap, convert = m.lineage.recipe
    assert (unwrap["flavor"], unwrap["wrapped"]) == ("keras", "data/model.keras")
    assert convert["from"] == "keras" and (repo.path("k", 1) / "original" / "model.keras").is_file()
    got = _run(repo, "k", {"features": keras_files.x})["output_0"]
    np.testing.assert_allclose(got, keras_files.expected, atol=1e-5)  # the same seeded weights


def test_pytorch_flavor(tmp_path: Path, repo: Repository) -> None:
    import mlflow.pytorch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    # mlflow 3 saves a torch.export program (model.pt2), traced on the input example: no pickle.
    mlflow.pytorch.save_model(net, str(tmp_path / "mlflow-torch"), input_example=x, pip_requirements=[])
    m = import_model(repo, tmp_path / "mlflow-torch", "net")
    assert m.format == "torch-export"
    assert m.lineage.recipe[0]["flavor"] == "pytorch" and m.lineage.recipe[0]["wrapped"] == "data/model.pt2"
    out = _run(repo, "net", {m.signature.inputs[0].name: x})
    np.testing.assert_allclose(next(iter(out.values())), expected, atol=1e-6)


def test_unknown_flavor_is_named(tmp_path: Path, repo: Repository) -> None:
    from mlflow.models import Model

    folder = tmp_path / "sk"
    folder.mkdir()
    model = Model()
    model.add_flavor("sklearn", pickled_model="model.pkl")
    model.save(str(folder / "MLmodel"))
    with pytest.raises(InvalidInput, match="flavors \\['sklearn'\\]"):
        import_model(repo, folder, "sk")


def test_pickled_pytorch_flavor_needs_trust_and_takes_mlflows_shapes(tmp_path: Path, repo: Repository) -> None:
    import mlflow.pytorch

    from shipyard.errors import UnsafeModel

    net = torch.nn.Linear(4, 2).eval()
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    mlflow.pytorch.save_model(net, str(tmp_path / "pickled"), serialization_format="pickle",
                              signature=_signature(x, expected), pip_requirements=[])
    with pytest.raises(UnsafeModel, match="--trust-pickle"):
        import_model(repo, tmp_path / "pickled", "pk")
    m = import_model(repo, tmp_path / "pickled", "pk", trust_pickle=True)
    assert m.format == "torch-export"  # exported once; the repository holds no pickle
    assert [(t.name, t.shape) for t in m.signature.inputs] == [("input", [-1, 4])]  # from the MLflow signature
    np.testing.assert_allclose(next(iter(_run(repo, "pk", {"input": x}).values())), expected, atol=1e-6)


def test_transformers_flavor_is_put_back_together(tmp_path: Path, repo: Repository) -> None:
    """MLflow keeps a pipeline's tokenizer apart (components/tokenizer); the import puts the
    Hugging Face folder back together, and the causal LM lands in the generation runtime."""
    import mlflow.transformers
    import transformers

    from tests.fixtures import build_tiny_lm

    folder = build_tiny_lm(tmp_path / "lm", "gpt2")
    pipeline = {"model": transformers.AutoModelForCausalLM.from_pretrained(folder),
                "tokenizer": transformers.AutoTokenizer.from_pretrained(folder)}
    mlflow.transformers.save_model(pipeline, str(tmp_path / "mlflow-lm"), task="text-generation", pip_requirements=[])
    m = import_model(repo, tmp_path / "mlflow-lm", "lm")
    assert m.format == "hf-causal-lm"
    step = m.lineage.recipe[0]
    assert (step["flavor"], step["wrapped"]) == ("transformers", "model + components/tokenizer")
    assert (repo.path("lm", 1) / "tokenizer.json").is_file()
