"""The V2 gRPC channel against a real server, through tritonclient.grpc (unchanged) and grpcio's
own health-checking client. The server also serves HTTP from the same process and data plane."""

from __future__ import annotations

import queue
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from shipyard.repository import Repository
from tests.fixtures import ServerProcess, digits_test
from tests.serve.conftest import ONNX_TYPES
from tests.serve.test_rest_v2 import in_process_logits


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(server.grpc_url)


def classify(client: tgrpc.InferenceServerClient, pixels: np.ndarray, version: str = "") -> np.ndarray:
    x = tgrpc.InferInput("pixels", list(pixels.shape), "FP32")
    x.set_data_from_numpy(pixels)  # tritonclient.grpc sends raw_input_contents
    result = client.infer("digits", [x], model_version=version, outputs=[tgrpc.InferRequestedOutput("logits")])
    logits: np.ndarray = result.as_numpy("logits")
    return logits


def test_health_and_metadata(client: tgrpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "shipyard" and "model_repository" in meta.extensions
    m = client.get_model_metadata("digits")
    assert list(m.versions) == ["1", "2"] and m.platform == "onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("pixels", "FP32", [-1, 1, 8, 8])]
    assert client.get_model_metadata("digits", "1").platform == "torch-export"
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")


def test_grpc_health_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_describes_the_service(server: ServerProcess) -> None:
    """grpcurl-style tools find the services and messages by reflection, without .proto files
    (issue 13), through grpcio-reflection's own client-side descriptor database."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.grpc_url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services, services
        service = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
        infer = service.FindMethodByName("ModelInfer")
        assert infer.input_type.name == "ModelInferRequest"
        assert "raw_input_contents" in infer.input_type.fields_by_name


def test_accuracy_equals_in_process(client: tgrpc.InferenceServerClient, serve_repo: Repository) -> None:
    pixels, labels = digits_test()
    for version in (1, 2):
        logits = classify(client, pixels[:64], str(version))
        np.testing.assert_allclose(logits, in_process_logits(serve_repo, version, pixels[:64]), rtol=1e-4, atol=1e-4)
        assert (logits.argmax(1) == labels[:64]).mean() > 0.85


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_datatype_round_trips_raw(client: tgrpc.InferenceServerClient, datatype: str) -> None:
    rng = np.random.default_rng(0)
    if datatype == "BYTES":
        data = np.array([[b"a", b"", "é".encode()], [b"x" * 300, b"\x00\x01", b"z"]], dtype=object)
    elif datatype == "BOOL":
        data = rng.random((2, 3)) > 0.5
    else:
        from shipyard.tensors import numpy_dtype

        dtype = numpy_dtype(datatype)
        data = (rng.random((2, 3)) * 100).astype(dtype)
    x = tgrpc.InferInput("x", [2, 3], datatype)
    x.set_data_from_numpy(data)
    out = client.infer(f"id_{datatype.lower()}", [x]).as_numpy("y")
    assert out.dtype == data.dtype or datatype == "BYTES"
    assert out.tolist() == data.tolist()


def test_streaming_answers_in_order_and_survives_a_bad_request(client: tgrpc.InferenceServerClient) -> None:
    pixels, _ = digits_test()
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(30):  # read ahead and run concurrently on the server, answered in order
            x = tgrpc.InferInput("pixels", [1, 1, 8, 8], "FP32")
            x.set_data_from_numpy(pixels[i : i + 1])
            client.async_stream_infer("digits", [x], request_id=str(i))
        bad = tgrpc.InferInput("pixels", [1, 65], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 65), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        x = tgrpc.InferInput("pixels", [1, 1, 8, 8], "FP32")
        x.set_data_from_numpy(pixels[:1])
        client.async_stream_infer("digits", [x], request_id="after")
        got = [answers.get(timeout=30) for _ in range(32)]
    finally:
        client.stop_stream()
    ok = [r for r, e in got if e is None]
    errors = [e for r, e in got if e is not None]
    assert [r.get_response().id for r in ok] == [*map(str, range(30)), "after"]
    assert len(errors) == 1 and "shape [1, 65]" in str(errors[0]) and "[-1, 1, 8, 8]" in str(errors[0])
    assert ok[0].as_numpy("logits").shape == (1, 10)


def test_async_infer_concurrently_batches(client: tgrpc.InferenceServerClient) -> None:
    pixels, labels = digits_test()
    results: queue.Queue[tuple[int, object, object]] = queue.Queue()
    for i in range(32):
        x = tgrpc.InferInput("pixels", [1, 1, 8, 8], "FP32")
        x.set_data_from_numpy(pixels[i : i + 1])
        client.async_infer("digits", [x], callback=partial(lambda i, result, error: results.put((i, result, error)), i))
    got = sorted(results.get(timeout=30) for _ in range(32))
    preds = np.array([r.as_numpy("logits").argmax() for _, r, e in got])  # type: ignore[union-attr]
    assert all(e is None for _, _, e in got)
    assert (preds == labels[:32]).mean() > 0.85


def test_model_config_and_statistics(client: tgrpc.InferenceServerClient) -> None:
    cfg = client.get_model_config("digits").config
    assert cfg.name == "digits" and cfg.max_batch_size == 32
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("pixels", [1, 8, 8])]
    assert cfg.input[0].data_type == 11  # TYPE_FP32
    stats = client.get_inference_statistics("digits", "2").model_stats
    assert len(stats) == 1 and stats[0].inference_count > 0
    assert stats[0].inference_stats.success.count > 0 and sum(b.compute_infer.count for b in stats[0].batch_stats) > 0


def test_repository_index_load_unload(fresh_repo: Repository) -> None:
    server = ServerProcess(fresh_repo.root, "--models", "two")
    try:
        c = tgrpc.InferenceServerClient(server.grpc_url)
        index = {(m.name, m.version): m.state for m in c.get_model_repository_index().models}
        assert index[("two", "1")] == "READY" and index[("digits", "2")] == "UNAVAILABLE"
        assert all(m.state == "READY" for m in c.get_model_repository_index(as_json=False).models if m.name == "two")
        c.load_model("digits")
        assert c.is_model_ready("digits")
        c.unload_model("digits")
        assert not any(m.name == "digits" and m.state == "READY" for m in c.get_model_repository_index().models)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert "StatusCode.NOT_FOUND" in str(e.value.status()) and "no_such_model" in str(e.value)
        assert str(fresh_repo.root) not in str(e.value) and "digits" not in str(e.value)  # issue 13 D15
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize(
    ("model", "inputs", "code", "words"),
    [
        ("nope", [("pixels", [1, 1, 8, 8], "FP32")], "NOT_FOUND", ["unknown model 'nope'"]),
        ("digits", [("pixels", [1, 65], "FP32")], "INVALID_ARGUMENT", ["shape [1, 65]", "[-1, 1, 8, 8]"]),
        ("digits", [("pixels", [1, 1, 8, 8], "FP64")], "INVALID_ARGUMENT", ["datatype FP64", "expects FP32"]),
        ("digits", [("wrong", [1, 1, 8, 8], "FP32")], "INVALID_ARGUMENT", ["unexpected input 'wrong'"]),
        ("broken", [("a", [1, 4], "FP32"), ("b", [1, 4], "FP32")], "UNAVAILABLE", ["checksum"]),
    ],
)
def test_bad_requests_get_the_right_code(client: tgrpc.InferenceServerClient, model: str,
                                         inputs: list[tuple[str, list[int], str]], code: str, words: list[str]) -> None:
    tensors = []
    for name, shape, datatype in inputs:
        t = tgrpc.InferInput(name, shape, datatype)
        t.set_data_from_numpy(np.zeros(shape, np.float64 if datatype == "FP64" else np.float32))
        tensors.append(t)
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, tensors)
    assert e.value.status() == f"StatusCode.{code}"
    for w in words:
        assert w in e.value.message(), e.value.message()
    assert client.is_server_live()  # and it goes on serving
    assert classify(client, digits_test()[0][:2]).shape == (2, 10)


def test_malformed_messages_are_named(server: ServerProcess) -> None:
    """Requests tritonclient would never build, sent with grpcio and our own messages."""
    from shipyard.protocol import messages_pb2 as pb

    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        x = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 1, 8, 8])
        cases = [
            (pb.ModelInferRequest(model_name="digits", inputs=[x], raw_input_contents=[b"\0" * 10]), "has 10 bytes"),
            (pb.ModelInferRequest(model_name="digits", inputs=[x], raw_input_contents=[b"", b""]), "2 raw_input_contents"),
            (pb.ModelInferRequest(model_name="digits", inputs=[x]), "has no data"),
            (pb.ModelInferRequest(model_name="digits", model_version="x1", inputs=[x]), "positive integer"),
            # Issue 13 D10: '١' (Arabic-Indic one) passes str.isdigit() and int() reads it as 1.
            (pb.ModelInferRequest(model_name="digits", model_version="\u0661", inputs=[x],
                                  raw_input_contents=[b"\0" * 256]), "positive integer"),
            (pb.ModelInferRequest(model_name="digits"), "no inputs"),
            # Issue 13 D6: these were INTERNAL.
            (pb.ModelInferRequest(model_name="digits\0", inputs=[x], raw_input_contents=[b"\0" * 256]), "not allowed"),
            (pb.ModelInferRequest(model_name="digits", raw_input_contents=[b""], inputs=[
                pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[0, 1 << 62])]), "2**60"),
            (pb.ModelInferRequest(inputs=[x]), "no model_name"),
        ]
        for request, words in cases:
            with pytest.raises(grpc.RpcError) as e:
                infer(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details(), e.value.details()
        # Typed contents work too (the slow path), and are checked for count and range.
        typed = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 1, 8, 8])
        typed.contents.fp32_contents.extend([0.5] * 64)
        reply = infer(pb.ModelInferRequest(model_name="digits", inputs=[typed]), timeout=10)
        assert np.frombuffer(reply.raw_output_contents[0], "<f4").shape == (10,)
        typed.contents.fp32_contents.append(1.0)
        with pytest.raises(grpc.RpcError) as e:
            infer(pb.ModelInferRequest(model_name="digits", inputs=[typed]), timeout=10)
        assert "65 elements in fp32_contents" in e.value.details()
        small = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[1, 3])
        small.contents.int_contents.extend([1, 2, 300])
        with pytest.raises(grpc.RpcError) as e:
            infer(pb.ModelInferRequest(model_name="id_int8", inputs=[small]), timeout=10)
        assert "do not fit INT8" in e.value.details()


def test_bytes_that_are_no_message_are_invalid_argument(server: ServerProcess) -> None:
    """grpc's own parsing answered UNKNOWN ("Unexpected error") for them (issue 13 D6)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            infer(b"\xff\xff\xff", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert "not a valid protobuf message" in e.value.details() and "ModelInferRequest" in e.value.details()
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as e:
            list(stream(iter([b"\xff\xff\xff"]), timeout=10))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        ready = channel.unary_unary("/inference.GRPCInferenceService/ServerReady")
        assert ready(b"", timeout=10) == b"\x08\x01"  # ready=true: valid bytes still work


def test_a_long_model_name_gets_its_message_not_resource_exhausted(client: tgrpc.InferenceServerClient) -> None:
    """The whole 100 KB name was echoed, past gRPC's metadata limit (issue 13 D11)."""
    x = tgrpc.InferInput("pixels", [1, 1, 8, 8], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("m" * 100_000, [x])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
    assert "is not allowed" in e.value.message() and "(100000 characters)" in e.value.message()
    assert len(e.value.message()) < 1000
