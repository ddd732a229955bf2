"""KServe V2 over gRPC (`inference.GRPCInferenceService`), wire-compatible with tritonclient.grpc."""

from shipyard.serve.channels.grpc_v2.servicer import GrpcChannel

__all__ = ["GrpcChannel"]
