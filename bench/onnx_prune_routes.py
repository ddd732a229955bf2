#!/usr/bin/env python3
"""Structured pruning of an ONNX model, two routes (issue 14): what shipyard does (convert the graph
to PyTorch with `optimize/passes/onnx_torch.py`, remove channels on the aten graph, export back to
ONNX) against graph surgery on the ONNX file itself (a prototype here, for plain chains of
Conv/Gemm through Relu/MaxPool/Flatten, which is all this CNN has). Both keep the same channels (L1
magnitude, half of each layer); the figures are the time each route takes and ΔL (cross-entropy on
held-out data, pruned minus parent), measured with ONNX Runtime on the CNN of tests/fixtures.py.

Usage: .venv/bin/python bench/onnx_prune_routes.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def surgery(src: Path, dest: Path, amount: float) -> None:
    """Keep the strongest output channels of every Conv/Gemm whose output reaches exactly one
    Conv/Gemm through Relu/MaxPool/Flatten, and the matching input columns of that consumer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    arr = {k: numpy_helper.to_array(v) for k, v in inits.items()}
    for node in [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]:
        w = arr[node.input[1]]
        out, spread, consumer = node.output[0], 1, None
        while True:
            nxt = users.get(out, [])
            if len(nxt) != 1:
                break
            n = nxt[0]
            if n.op_type in ("Conv", "Gemm"):
                consumer = n
                break
            if n.op_type == "Flatten":
                spread = 25  # 16 x 5 x 5 after the second pool: the prototype knows this CNN
            elif n.op_type not in ("Relu", "MaxPool"):
                break
            out = n.output[0]
        if consumer is None:
            continue
        keep_n = max(1, round(w.shape[0] * (1 - amount)))
        keep = np.sort(np.argsort(-np.abs(w).reshape(w.shape[0], -1).sum(1))[:keep_n])
        arr[node.input[1]] = w[keep]
        if len(node.input) > 2:
            arr[node.input[2]] = arr[node.input[2]][keep]
        cw = arr[consumer.input[1]]
        trans_b = any(a.name == "transB" and a.i for a in consumer.attribute)
        cols = (keep[:, None] * spread + np.arange(spread)[None, :]).reshape(-1) if spread > 1 else keep
        arr[consumer.input[1]] = cw[:, cols] if consumer.op_type == "Conv" or trans_b else cw[cols]
    for name, t in inits.items():
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[name]), name))
    del model.graph.value_info[:]  # shapes inside changed; ORT infers them again
    onnx.save(model, str(dest))


def loss(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def main() -> None:
    import torch

    from shipyard.optimize.artifact import Artifact
    from shipyard.optimize.passes import Context, apply
    from shipyard.optimize.recipe import parse_recipe
    from shipyard.repository import Signature, TensorSpec
    from tests.fixtures import cnn_data, export_onnx, trained_cnn

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="prune-routes-"))
    x2, _ = cnn_data(2, 1)
    src = export_onnx(trained_cnn(), tmp / "cnn.onnx", {"image": torch.from_numpy(x2)}, ["logits"])
    x, y = cnn_data(512, 2)
    sig = Signature(inputs=[TensorSpec(name="image", datatype="FP32", shape=[-1, 3, 32, 32])],
                    outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 10])])
    base = loss(src, x, y)
    rows = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        surgery(src, tmp / f"surgery{r}.onnx", 0.5)
        t_s = time.perf_counter() - t0
        ctx = Context(workdir=tmp / f"w{r}")
        ctx.workdir.mkdir()
        t0 = time.perf_counter()
        art = Artifact("onnx", sig, onnx_path=src)
        for step in parse_recipe([{"pass": "prune-structured", "amount": 0.5}, {"pass": "export", "format": "onnx"}]):
            art = apply(art, step, ctx)
        t_c = time.perf_counter() - t0
        assert art.onnx_path is not None
        rows.append((t_s, t_c, loss(tmp / f"surgery{r}.onnx", x, y) - base, loss(art.onnx_path, x, y) - base))
    print(f"parent loss {base:.4f} on {len(y)} held-out samples; {args.repeat} runs, 1 torch thread")
    print("route                         time (median)   ΔL")
    print(f"ONNX graph surgery            {1000 * np.median([r[0] for r in rows]):8.1f} ms   {rows[0][2]:+.4f}")
    print(f"convert to PyTorch + export   {1000 * np.median([r[1] for r in rows]):8.1f} ms   {rows[0][3]:+.4f}")


if __name__ == "__main__":
    main()
