"""Loading one model version and running it. One registry keyed by the manifest's format."""

from __future__ import annotations

from pathlib import Path

from shipyard.errors import InvalidInput
from shipyard.repository import Manifest
from shipyard.runtimes.base import Runtime, RuntimeOptions
from shipyard.runtimes.hf import HFTransformersRuntime
from shipyard.runtimes.hf_causal import HFCausalLMRuntime
from shipyard.runtimes.onnx import OnnxRuntime
from shipyard.runtimes.tflite import TfliteRuntime
from shipyard.runtimes.torch_export import TorchExportRuntime
from shipyard.runtimes.torchscript import TorchScriptRuntime

REGISTRY: dict[str, type[Runtime]] = {
    cls.format: cls
    # Order matters for importing: the first class that claims a path decides its format, so the
    # causal-LM runtime comes before the general Hugging Face one.
    for cls in (OnnxRuntime, TorchExportRuntime, TorchScriptRuntime, HFCausalLMRuntime, HFTransformersRuntime,
                TfliteRuntime)
}


def runtime_for(manifest: Manifest, path: Path, options: RuntimeOptions) -> Runtime:
    try:
        cls = REGISTRY[manifest.format]
    except KeyError:
        raise InvalidInput(
            f"{manifest.name}:{manifest.version} has format '{manifest.format}', which no runtime "
            f"serves; known formats: {', '.join(sorted(REGISTRY))}"
        ) from None
    return cls(path, manifest, options)


__all__ = ["REGISTRY", "Runtime", "RuntimeOptions", "runtime_for"]
