"""ONNX versions: `model.onnx`. Loading copies the file into the work folder (and gives a tied
embedding its head's copy back); saving stores a tied embedding once and, for pruned models, the
mostly-zero weights as sparse initializers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.optimize.artifact import Artifact, run_artifact
from shipyard.optimize.formats.base import Format, register, tally
from shipyard.optimize.parity import check_parity
from shipyard.optimize.tied import TIED, store_tied_once, untie
from shipyard.repository import Manifest

if TYPE_CHECKING:
    from shipyard.optimize.passes.base import Context

FILE = "model.onnx"


@register
class Onnx(Format):
    name = "onnx"
    kind = "onnx"

    def load(self, folder: Path, manifest: Manifest, workdir: Path) -> Artifact:
        dest = workdir / "source.onnx"
        shutil.copyfile(folder / FILE, dest)
        _untie(dest)
        # An imported TensorFlow model keeps its original (original/), which TF-side passes read.
        original = {"tf_original": str(folder / manifest.extra["original"]), "tf_onnx": str(dest)} \
            if manifest.extra.get("original") else {}
        return Artifact("onnx", manifest.signature, onnx_path=dest, extra=original)

    def saves(self, artifact: Artifact) -> bool:
        return artifact.kind == "onnx"

    def save(self, artifact: Artifact, dest: Path, ctx: Context) -> dict[str, Any]:
        save_onnx(artifact, dest / FILE, ctx)
        return {}

    def count(self, folder: Path) -> tuple[int, int]:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(folder / FILE))
        tensors: list[np.ndarray] = []
        for t in model.graph.initializer:
            if t.name.endswith(("_scale", "_zero_point", "_quantized_scale")) or len(t.dims) == 0 or \
                    t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL):  # shapes, axes, masks
                continue
            tensors.append(numpy_helper.to_array(t))
        for s in model.graph.sparse_initializer:
            dense = int(np.prod(s.dims))
            nnz = int(np.prod(s.values.dims))
            tensors.append(np.concatenate([np.ones(nnz), np.zeros(dense - nnz)]))
        return tally(tensors)


def _untie(path: Path) -> None:
    """A saved tied embedding (stored once, see `shipyard.optimize.tied`) gets its head's copy back,
    so that passes find the head's weight where they look for weights."""
    import onnx

    if any(n.name.startswith(f"{TIED}/") for n in onnx.load(str(path), load_external_data=False).graph.node):
        model = onnx.load(str(path))
        untie(model)
        onnx.save(model, str(path))


def save_onnx(artifact: Artifact, dest: Path, ctx: Context, min_zeros: float = 0.5) -> None:
    """Copy the ONNX file; store a tied embedding once (see `shipyard.optimize.tied`), and when it
    carries pruned weights, each mostly-zero fp32 initializer as a sparse initializer if smaller."""
    assert artifact.onnx_path is not None
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(artifact.onnx_path))
    shared = store_tied_once(model)
    if shared:
        _check_tied(artifact, model, dest, ctx, shared)  # writes `dest`, then runs it
    if not artifact.extra.get("sparse"):
        if not shared:
            shutil.copyfile(artifact.onnx_path, dest)
        return
    keep, sparse, saved = [], [], 0
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t) if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1 else None
        if w is None or (w == 0).mean() < min_zeros:
            keep.append(t)
            continue
        flat = w.reshape(-1)
        idx = np.flatnonzero(flat)
        itype = np.int16 if flat.size <= np.iinfo(np.int16).max else np.int32
        if len(idx) * (4 + np.dtype(itype).itemsize) >= w.nbytes:
            keep.append(t)
            continue
        sparse.append(helper.make_sparse_tensor(numpy_helper.from_array(flat[idx], t.name),
                                                numpy_helper.from_array(idx.astype(itype), f"{t.name}_indices"),
                                                list(w.shape)))
        saved += w.nbytes - len(idx) * (4 + np.dtype(itype).itemsize)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.sparse_initializer.extend(sparse)
    onnx.save(model, str(dest))
    ctx.note(f"{len(sparse)} pruned weight tensors stored as ONNX sparse initializers ({saved / 1024:.0f} KB smaller)")


def _check_tied(artifact: Artifact, model: Any, dest: Path, ctx: Context, shared: list[str]) -> None:
    """The rewritten graph must compute what the exported one did (the same weights, transposed
    back at load: only float reordering could differ)."""
    import onnx

    onnx.save(model, str(dest))
    sample = ctx.sample(artifact.signature, 8)
    worst = check_parity("storing the tied embedding once", run_artifact(artifact, sample, ctx.threads),
                         run_artifact(artifact.evolve(onnx_path=dest), sample, ctx.threads), 1e-5, 1e-6)
    ctx.facts["tied_stored_once"] = shared
    ctx.note(f"tied embedding {shared} stored once in the ONNX file: the output projection reads it through "
             f"a Transpose that ONNX Runtime folds at load (largest difference {worst.max_abs_diff:.2g})")
