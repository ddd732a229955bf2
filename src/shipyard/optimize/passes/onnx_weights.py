"""Weight passes on ONNX graphs directly: clipping and low-rank factorisation of the fp32
initializers that Conv/Gemm/MatMul nodes read as weights. The clip and low-rank handlers call these
for ONNX artifacts, so an ONNX (or TorchScript, converted once at load) version takes them without
a round trip through PyTorch. Every function writes a new file under the context's work folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact
from shipyard.optimize.passes.base import Context

WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class Weight:
    """One weight initializer and the node that reads it (input 1)."""

    node: Any
    init: Any
    array: np.ndarray

    @property
    def layer(self) -> str:
        return str(self.node.name or self.init.name)


def _load(artifact: Artifact) -> Any:
    import onnx

    assert artifact.onnx_path is not None
    return onnx.load(str(artifact.onnx_path))


def weights(model: Any, ops: tuple[str, ...] = WEIGHT_OPS) -> list[Weight]:
    """fp32 weight initializers (2-D and up) read as input 1 of a node of `ops`, once each."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out: list[Weight] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ops or len(node.input) < 2 or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        if init.name in seen or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2:
            continue
        seen.add(init.name)
        out.append(Weight(node, init, numpy_helper.to_array(init)))
    return out


def _save(model: Any, artifact: Artifact, ctx: Context, stem: str) -> Artifact:
    import onnx

    path = ctx.path(stem, ".onnx")
    onnx.save(model, str(path))
    return artifact.evolve(onnx_path=path)


def clip(artifact: Artifact, threshold: float | None, percentile: float | None,
         ctx: Context) -> tuple[Artifact, dict[str, float]]:
    """Clamp each weight to [-t, t] (t given, or the percentile of the layer's |w|); returns the
    new artifact and, per weight, the fraction of values that moved."""
    from onnx import numpy_helper

    model = _load(artifact)
    found = weights(model)
    if not found:
        raise InvalidInput("pass 'clip' found no fp32 Conv/Gemm/MatMul weights in the ONNX graph (a quantized "
                           "graph has none left: clip before the quantize pass)")
    moved: dict[str, float] = {}
    for w in found:
        t = threshold if threshold is not None else float(np.percentile(np.abs(w.array), percentile))
        moved[w.init.name] = float((np.abs(w.array) > t).mean())
        w.init.CopyFrom(numpy_helper.from_array(np.clip(w.array, -t, t).astype(np.float32), w.init.name))
    return _save(model, artifact, ctx, "clipped"), moved


def pays(r: int, m: int, n: int) -> bool:
    """Factoring an m x n matrix at rank r saves FLOPs and bytes alike only when r (m + n) < m n."""
    return r * (m + n) < m * n


def rank_of(s: np.ndarray, energy: float | None, ratio: float | None) -> int:
    if ratio is not None:
        return max(1, math.ceil(ratio * len(s)))
    e = np.cumsum(s.astype(np.float64) ** 2) / float((s.astype(np.float64) ** 2).sum())
    return int(np.searchsorted(e, energy)) + 1


def _matrix(w: Weight) -> tuple[np.ndarray, bool] | None:
    """The weight as the (in x out) matrix the node multiplies by, and whether it is stored
    transposed (Gemm transB=1); None where the node does more than x @ W (+ b)."""
    from onnx import helper

    if w.node.op_type == "MatMul":
        return (w.array, False) if w.array.ndim == 2 else None
    if w.node.op_type != "Gemm":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in w.node.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
        return None
    return (w.array.T, True) if attrs.get("transB", 0) else (w.array, False)


def low_rank(artifact: Artifact, energy: float | None, ratio: float | None, exclude: list[str],
             ctx: Context) -> tuple[Artifact, dict[str, Any], list[str], list[str]]:
    """Replace each MatMul/Gemm whose weight W (in x out) has a paying rank r by x @ A @ B (+ bias),
    A = V_r sqrt(S_r) (in x r), B = sqrt(S_r) U_r^T (r x out). Returns the artifact, the layers
    factored, those kept whole because r (m + n) >= m n, and Conv layers (not factored here)."""
    from onnx import helper, numpy_helper

    model = _load(artifact)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    done: dict[str, Any] = {}
    kept: list[str] = []
    convs = [w.layer for w in weights(model, ("Conv",))]
    nodes = list(model.graph.node)
    for w in weights(model, ("Gemm", "MatMul")):
        if w.layer in exclude or w.init.name in exclude:
            continue
        mat = _matrix(w)
        if mat is None or uses.get(w.init.name, 0) > 1:  # a shared weight would be stored twice
            kept.append(w.layer)
            continue
        wm, _ = mat
        n_in, m_out = wm.shape
        u, s, vh = np.linalg.svd(wm.astype(np.float64), full_matrices=False)
        r = rank_of(s, energy, ratio)
        if not pays(r, m_out, n_in):
            kept.append(w.layer)
            continue
        root = np.sqrt(s[:r])
        a = (u[:, :r] * root[None, :]).astype(np.float32)  # in x r
        b = (root[:, None] * vh[:r]).astype(np.float32)  # r x out
        base = w.init.name
        mid = f"{base}/lowrank_mid"
        model.graph.initializer.remove(w.init)
        model.graph.initializer.extend([numpy_helper.from_array(a, f"{base}/lowrank_a"),
                                        numpy_helper.from_array(b, f"{base}/lowrank_b")])
        first = helper.make_node("MatMul", [w.node.input[0], f"{base}/lowrank_a"], [mid], name=f"{w.layer}/lowrank_a")
        if w.node.op_type == "MatMul":
            second = helper.make_node("MatMul", [mid, f"{base}/lowrank_b"], list(w.node.output), name=w.layer)
        else:
            attrs = {a_.name: helper.get_attribute_value(a_) for a_ in w.node.attribute}
            second = helper.make_node("Gemm", [mid, f"{base}/lowrank_b", *w.node.input[2:]], list(w.node.output),
                                      name=w.layer, beta=float(attrs.get("beta", 1.0)))
        at = nodes.index(w.node)
        nodes[at:at + 1] = [first, second]
        done[w.layer] = {"shape": [m_out, n_in], "rank": r, "params_before": m_out * n_in,
                         "params_after": r * (m_out + n_in)}
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return _save(model, artifact, ctx, "lowrank"), done, kept, convs
