"""Importing model files: the signature is read from the file where it records one, pickles are
refused unless trusted, and anything that is not a model is a clear InvalidInput."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from shipyard.errors import InvalidInput, NotFound, UnsafeModel
from shipyard.repository import Repository, Signature, TensorSpec
from shipyard.runtimes import RuntimeOptions, runtime_for
from shipyard.runtimes.importer import import_model, merge_signature, parse_tensor_spec
from tests.fixtures import TwoInputs, export_onnx, identity_onnx

A = TensorSpec(name="a", datatype="FP32", shape=[-1, 4])
B = TensorSpec(name="b", datatype="FP32", shape=[-1, 4])
Y = TensorSpec(name="y", datatype="FP32", shape=[-1, 4])
SUM = TensorSpec(name="sum", datatype="FP32", shape=[-1, 1])


def spec(text: str) -> TensorSpec:
    return parse_tensor_spec(text)


def infer_two(repo: Repository, name: str, version: int, outputs: list[str]) -> dict[str, np.ndarray]:
    m = repo.manifest(name, version)
    rt = runtime_for(m, repo.path(name, version), RuntimeOptions(threads=1))
    rt.load()
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 0.5, dtype=np.float32)
    inputs = dict(zip([t.name for t in m.signature.inputs], (a, b), strict=True))
    return rt.infer(inputs, outputs)


def assert_two_inputs_outputs(out: list[np.ndarray]) -> None:
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    y, s = TwoInputs()(a, torch.full((3, 4), 0.5))
    np.testing.assert_allclose(out[0], y.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[1], s.numpy(), rtol=0, atol=1e-6)


# -- ONNX --------------------------------------------------------------------------------------
def test_import_onnx_reads_the_signature(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    m = import_model(repo, two_inputs_files["onnx"], "two")
    assert (m.name, m.version, m.format) == ("two", 1, "onnx")
    assert m.signature == Signature(inputs=[A, B], outputs=[Y, SUM])
    assert m.signature.batched
    assert [f.path for f in m.files] == ["model.onnx"]
    assert m.extra["opset"] == 17
    assert m.lineage.source == str(two_inputs_files["onnx"].resolve())
    assert (repo.path("two", 1) / "model.onnx").read_bytes() == two_inputs_files["onnx"].read_bytes()
    repo.verify(m)
    # Importing again is the next version, the first untouched.
    assert import_model(repo, two_inputs_files["onnx"], "two").version == 2
    assert repo.manifest("two", 1) == m


@pytest.mark.parametrize(("onnx_type", "datatype"), [
    (TensorProto.BOOL, "BOOL"), (TensorProto.UINT8, "UINT8"), (TensorProto.UINT16, "UINT16"),
    (TensorProto.UINT32, "UINT32"), (TensorProto.UINT64, "UINT64"), (TensorProto.INT8, "INT8"),
    (TensorProto.INT16, "INT16"), (TensorProto.INT32, "INT32"), (TensorProto.INT64, "INT64"),
    (TensorProto.FLOAT16, "FP16"), (TensorProto.FLOAT, "FP32"), (TensorProto.DOUBLE, "FP64"),
    (TensorProto.STRING, "BYTES"),
])
def test_onnx_datatypes_and_dynamic_dims(repo: Repository, tmp_path: Path, onnx_type: int, datatype: str) -> None:
    path = identity_onnx(tmp_path / "id.onnx", onnx_type, ["batch", 3, None, 5])
    m = import_model(repo, path, "id")
    assert m.signature.inputs == [TensorSpec(name="x", datatype=datatype, shape=[-1, 3, -1, 5])]
    assert m.signature.outputs == [TensorSpec(name="y", datatype=datatype, shape=[-1, 3, -1, 5])]


def test_onnx_initializers_listed_as_inputs_are_not_inputs(repo: Repository, tmp_path: Path) -> None:
    # Older exporters list every weight in graph.input too; only real inputs belong in the signature.
    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "add.onnx"))
    m = import_model(repo, tmp_path / "add.onnx", "add")
    assert [t.name for t in m.signature.inputs] == ["x"]


def test_onnx_external_weights_become_one_file(repo: Repository, tmp_path: Path) -> None:
    lin = torch.nn.Linear(4, 3).eval()
    src = export_onnx(lin, tmp_path / "lin_inline.onnx", {"x": torch.zeros(2, 4)}, ["y"])
    model = onnx.load(str(src))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(model, str(ext / "lin.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="lin.weights", size_threshold=0)
    assert (ext / "lin.weights").stat().st_size > 0
    m = import_model(repo, ext / "lin.onnx", "lin")
    assert [f.path for f in m.files] == ["model.onnx"]
    (ext / "lin.weights").unlink()  # the version must not depend on the source folder any more
    rt = runtime_for(m, repo.path("lin", 1), RuntimeOptions(threads=1))
    rt.load()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = lin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rt.infer({"x": x}, ["y"])["y"], expected, atol=1e-6)


def test_onnx_override_names(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    m = import_model(repo, two_inputs_files["onnx"], "two",
                     outputs=[spec("y:FP32:-1,4"), spec("total:FP32:-1,1")])
    assert [t.name for t in m.signature.outputs] == ["y", "total"]
    assert m.signature.inputs == [A, B]


# -- torch.export ------------------------------------------------------------------------------
def test_import_torch_export(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    m = import_model(repo, two_inputs_files["torch-export"], "two")
    assert m.format == "torch-export"
    assert [f.path for f in m.files] == ["model.pt2"]
    # Inputs are named by forward()'s arguments; outputs positionally.
    assert m.signature == Signature(
        inputs=[A, B],
        outputs=[TensorSpec(name="output__0", datatype="FP32", shape=[-1, 4]),
                 TensorSpec(name="output__1", datatype="FP32", shape=[-1, 1])],
    )
    out = infer_two(repo, "two", 1, ["output__0", "output__1"])
    assert_two_inputs_outputs([out["output__0"], out["output__1"]])


def test_torch_export_output_names_can_be_given(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    m = import_model(repo, two_inputs_files["torch-export"], "two",
                     outputs=[spec("y:FP32:-1,4"), spec("sum:FP32:-1,1")])
    assert m.signature == Signature(inputs=[A, B], outputs=[Y, SUM])
    out = infer_two(repo, "two", 1, ["sum", "y"])
    assert_two_inputs_outputs([out["y"], out["sum"]])


def test_override_with_the_wrong_count_is_refused(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput) as e:
        import_model(repo, two_inputs_files["torch-export"], "two", outputs=[spec("y:FP32:-1,4")])
    assert "has 2 outputs (output__0, output__1); 1 were given" in e.value.message
    assert repo.models() == []


# -- TorchScript -------------------------------------------------------------------------------
def test_torchscript_needs_the_signature(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput) as e:
        import_model(repo, two_inputs_files["torchscript"], "two")
    assert "--input NAME:DATATYPE:DIMS" in e.value.message and "--output" in e.value.message
    with pytest.raises(InvalidInput, match="--input"):
        import_model(repo, two_inputs_files["torchscript"], "two", inputs=[A, B])
    assert repo.models() == []


def test_torchscript_named_pt_is_not_taken_for_a_pickle(repo: Repository, two_inputs_files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.pt"  # how TorchScript files are often named
    path.write_bytes(two_inputs_files["torchscript"].read_bytes())
    m = import_model(repo, path, "two", inputs=[A, B], outputs=[Y, SUM])
    assert m.format == "torchscript"


def test_import_torchscript_with_signature(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    m = import_model(repo, two_inputs_files["torchscript"], "two",
                     inputs=[spec("a:FP32:-1,4"), spec("b:fp32:-1,4")],
                     outputs=[spec("y:FP32:-1,4"), spec("sum:FP32:-1,1")])
    assert m.format == "torchscript"
    assert [f.path for f in m.files] == ["model.ts"]
    assert m.signature == Signature(inputs=[A, B], outputs=[Y, SUM])
    out = infer_two(repo, "two", 1, ["y", "sum"])
    assert_two_inputs_outputs([out["y"], out["sum"]])


# -- pickles -----------------------------------------------------------------------------------
def test_pickled_module_is_refused_without_trust(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    with pytest.raises(UnsafeModel) as e:
        import_model(repo, two_inputs_files["pickled-module"], "two", inputs=[A, B])
    assert "pickle" in e.value.message and "--trust-pickle" in e.value.message
    assert repo.models() == []


def test_trusted_pickled_module_is_imported_as_torch_export(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    m = import_model(repo, two_inputs_files["pickled-module"], "two", inputs=[A, B], trust_pickle=True)
    assert m.format == "torch-export"
    assert [f.path for f in m.files] == ["model.pt2"]
    assert m.signature.inputs == [A, B]
    assert [t.name for t in m.signature.outputs] == ["output__0", "output__1"]
    assert m.signature.batched
    assert m.lineage.source == str(two_inputs_files["pickled-module"].resolve())
    out = infer_two(repo, "two", 1, ["output__0", "output__1"])
    assert_two_inputs_outputs([out["output__0"], out["output__1"]])


def test_trusted_pickled_module_needs_inputs(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="--input NAME:DATATYPE:DIMS"):
        import_model(repo, two_inputs_files["pickled-module"], "two", trust_pickle=True)


def test_trusted_state_dict_is_weights_not_a_model(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput) as e:
        import_model(repo, two_inputs_files["state-dict"], "lin", inputs=[A], trust_pickle=True)
    assert "not a model" in e.value.message and "state_dict has weights but no code" in e.value.message
    assert repo.models() == []


def test_plain_pickle_file_is_refused(repo: Repository, tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "model.data"
    path.write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=4))
    with pytest.raises(UnsafeModel, match="--trust-pickle"):
        import_model(repo, path, "m")


# -- not models --------------------------------------------------------------------------------
def test_random_bytes_named_onnx(repo: Repository, tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidInput, match="junk.onnx is not a readable ONNX model"):
        import_model(repo, path, "junk")
    assert repo.models() == []


@pytest.mark.parametrize("filename", ["notes.txt", "model", "weights.safetensors"])
def test_files_that_are_not_models(repo: Repository, tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    path.write_text("this is not a model\n")
    with pytest.raises(InvalidInput) as e:
        import_model(repo, path, "m")
    assert f"{path} is not a format shipyard can import" in e.value.message
    assert "ONNX file (.onnx)" in e.value.message


def test_folder_that_is_not_a_model(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is not a format shipyard can import"):
        import_model(repo, tmp_path, "m")


def test_nonexistent_path(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nope.onnx does not exist"):
        import_model(repo, tmp_path / "nope.onnx", "m")


def test_bad_name_is_refused_before_anything_is_written(repo: Repository, two_inputs_files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="is not allowed"):
        import_model(repo, two_inputs_files["onnx"], "../two")
    assert not repo.root.exists() or list(repo.root.iterdir()) == []


# -- tensor specs ------------------------------------------------------------------------------
def test_parse_tensor_spec() -> None:
    assert parse_tensor_spec("pixels:FP32:-1,1,8,8") == TensorSpec(name="pixels", datatype="FP32", shape=[-1, 1, 8, 8])
    assert parse_tensor_spec("s:bytes:") == TensorSpec(name="s", datatype="BYTES", shape=[])


@pytest.mark.parametrize(("text", "words"), [
    ("pixels", "must look like NAME:DATATYPE:DIM,DIM"),
    ("pixels:FP32", "must look like NAME:DATATYPE:DIM,DIM"),
    ("pixels:FP32:-1,x", "dimensions must be integers"),
    ("pixels:FLOAT:-1", "unknown datatype 'FLOAT'"),
    ("pixels:FP32:-2,4", "below -1"),
])
def test_bad_tensor_specs(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_tensor_spec(text)
    assert words in e.value.message
    assert repr(text) in e.value.message


def test_merge_signature_keeps_what_was_not_overridden(tmp_path: Path) -> None:
    found = Signature(inputs=[A, B], outputs=[Y, SUM])
    renamed = [spec("p:FP32:-1,4"), spec("q:FP32:-1,4")]
    assert merge_signature(found, renamed, None, tmp_path) == Signature(inputs=renamed, outputs=[Y, SUM])
    with pytest.raises(InvalidInput, match=r"has 2 inputs \(a, b\); 1 were given"):
        merge_signature(found, [A], None, tmp_path)
