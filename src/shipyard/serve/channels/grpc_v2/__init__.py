"""KServe V2 over gRPC (`inference.GRPCInferenceService`), wire-compatible with tritonclient.grpc."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.serve.channels import Channel, Listener

if TYPE_CHECKING:
    from fastapi import FastAPI


def mount(app: FastAPI) -> Listener | None:
    """Its own port (`--grpc-port`; 0 turns it off), on the app's data plane."""
    settings = app.state.settings
    if not settings.grpc_port:
        return None
    from shipyard.serve.channels.grpc_v2.servicer import GrpcChannel

    return GrpcChannel(app.state.dataplane, lambda: bool(app.state.ready), settings)


CHANNEL = Channel(name="grpc_v2", mount=mount)
