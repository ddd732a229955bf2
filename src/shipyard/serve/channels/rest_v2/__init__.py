"""KServe V2 / Open Inference Protocol over HTTP, with Triton's binary tensor and repository
extensions."""

from shipyard.serve.channels.rest_v2.routes import InferFastPath, router

__all__ = ["InferFastPath", "router"]
