"""TorchScript versions (`model.ts`, a `torch.jit.save` file): converted once, at load, to ONNX
(PyTorch's TorchScript exporter reads scripted and traced modules alike; torch.export cannot take a
ScriptModule), checked against the TorchScript module on sample inputs. From there every pass
applies: those on ONNX directly, structured pruning and distillation through `onnx_torch.py`.
Results are saved as ONNX (this format saves nothing itself)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, run_artifact
from shipyard.optimize.data import synthetic
from shipyard.optimize.formats.base import Format, register, tally
from shipyard.optimize.parity import check_parity
from shipyard.repository import Manifest

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context

FILE = "model.ts"
OPSET = 17
# The exporter replays the same ops: only float reordering may differ.
ATOL, RTOL = 1e-4, 1e-4


@register
class TorchScript(Format):
    name = "torchscript"
    kind = "onnx"

    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        import torch

        module = torch.jit.load(str(folder / FILE), map_location="cpu").eval()
        sig = manifest.signature
        sample = synthetic(sig, 4)
        args = tuple(torch.from_numpy(sample[t.name]) for t in sig.inputs)
        dynamic = {t.name: {i: f"{t.name}_dim{i}" if i else "batch" for i, d in enumerate(t.shape) if d == -1}
                   for t in [*sig.inputs, *sig.outputs]}
        dest = workdir / "source.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(dest), input_names=[t.name for t in sig.inputs],
                                  output_names=[t.name for t in sig.outputs], dynamic_axes=dynamic,
                                  opset_version=OPSET, dynamo=False)
        except Exception as e:  # the exporter raises many kinds; name the op and the way out
            raise InvalidInput(f"{manifest.name}:{manifest.version} (TorchScript) could not be converted to ONNX "
                               f"for optimizing: {str(e).splitlines()[0][:300]}; export the model to ONNX or "
                               "torch.export yourself and import that") from None
        artifact = Artifact("onnx", sig, onnx_path=dest, extra={"converted_from": "torchscript"})
        with torch.inference_mode():
            result = module(*args)
        result = result if isinstance(result, tuple) else (result,)
        expected = {t.name: r.float().numpy() for t, r in zip(sig.outputs, result, strict=True)}
        check_parity(f"converting {manifest.name}:{manifest.version} from TorchScript to ONNX", expected,
                     run_artifact(artifact, sample), ATOL, RTOL)
        return artifact

    def saves(self, artifact: Artifact) -> bool:
        return False  # results are ONNX: the onnx format saves them

    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        raise InvalidInput("a result is never saved as TorchScript; it is saved as ONNX")

    def count(self, folder: Path) -> tuple[int, int]:
        import torch

        module = torch.jit.load(str(folder / FILE), map_location="cpu")
        return tally(t.detach().float().numpy() for t in module.state_dict().values())
