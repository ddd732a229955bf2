"""ONNX -> PyTorch for the passes that change a model's shape or train it (structured pruning,
distillation). The graph's common ops become real `nn` layers (Conv/Gemm/MatMul+Add/BatchNorm) and
functional calls, interpreted in the ONNX node order; the module is checked against ONNX Runtime on
sample inputs and then exported with torch.export, so the passes see the same aten graph as for a
model made in PyTorch (`graph.py`). An op outside the list is refused by node name, with the way
out. Why not onnx2torch: it imports torchvision (not a dependency here, and pinned per torch
release). Why not graph surgery on the ONNX file: it is faster (ms against 0.2 s, BENCHMARKS.md)
and gives the same model, but cannot fine-tune or train a student.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, program_module, run_artifact
from shipyard.optimize.parity import check_parity
from shipyard.optimize.passes.base import Context

ELEMENTWISE: dict[str, Callable[..., torch.Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
    "Identity": lambda x: x, "Dropout": lambda x: x,
}
BINARY: dict[str, Callable[..., torch.Tensor]] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
SUPPORTED = sorted({"Conv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
                    "Flatten", "Reshape", "Softmax", "LogSoftmax", "LeakyRelu", "Gelu", *ELEMENTWISE, *BINARY})


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _layer_name(node: Any, taken: set[str]) -> str:
    """'/features/conv1/Conv' -> 'features_conv1': the name the layer has in the source model."""
    raw = node.name or node.output[0]
    parts = [p for p in raw.strip("/").split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == node.op_type:
        parts = parts[:-1]
    name = re.sub(r"\W", "_", "_".join(parts)) or node.op_type.lower()
    name = name if not name[0].isdigit() else f"n{name}"
    base, i = name, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _pads(pads: list[int] | None, rank: int) -> tuple[int, ...] | None:
    """ONNX [b1, b2, e1, e2] -> torch's symmetric padding, or None when the two sides differ."""
    pads = list(pads or [0] * (2 * rank))
    begin, end = pads[:rank], pads[rank:]
    return tuple(begin) if begin == end else None


class FromOnnx(nn.Module):
    """The ONNX graph as a module: `forward(*inputs)` returns the graph outputs as a tuple."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        from onnx import numpy_helper

        self.layers: list[str] = []  # submodules, named as in the source model (graph.py reports these names)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        inits = set(self.consts)
        self.inputs = [i.name for i in model.graph.input if i.name not in inits]
        self.outputs = [o.name for o in model.graph.output]
        self.steps: list[Callable[[dict[str, torch.Tensor]], None]] = []
        taken: set[str] = set(dir(self))
        consumed: set[int] = set()
        nodes = list(model.graph.node)
        for i, node in enumerate(nodes):
            if i in consumed:
                continue
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
                continue
            fused = self._matmul_add(node, nodes[i + 1] if i + 1 < len(nodes) else None, taken)
            if fused:
                consumed.add(i + 1)
                continue
            self.steps.append(self._step(node, taken))

    def _const(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.consts[name]))

    def _matmul_add(self, node: Any, nxt: Any, taken: set[str]) -> bool:
        """MatMul(x, W) followed by Add(., b) on initializers: one Linear (what torch exports for a
        Linear at opset 17 when the input is not 2-D, and what some exporters write always)."""
        if node.op_type != "MatMul" or node.input[1] not in self.consts or nxt is None or nxt.op_type != "Add":
            return False
        w = self.consts[node.input[1]]
        other = [x for x in nxt.input if x != node.output[0]]
        if w.ndim != 2 or len(other) != 1 or node.output[0] not in nxt.input or other[0] not in self.consts:
            return False
        b = self.consts[other[0]]
        if b.shape != (w.shape[1],):
            return False
        self.steps.append(self._linear(node, taken, w.T, b, node.input[0], nxt.output[0]))
        return True

    def _linear(self, node: Any, taken: set[str], w: np.ndarray, b: np.ndarray | None, x: str,
                y: str) -> Callable[[dict[str, torch.Tensor]], None]:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        lin.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
        if b is not None:
            lin.bias = nn.Parameter(torch.from_numpy(np.ascontiguousarray(b, np.float32)))
        name = _layer_name(node, taken)
        self._add(name, lin)
        return lambda env: env.__setitem__(y, getattr(self, name)(env[x]))

    def _refuse(self, node: Any, why: str) -> InvalidInput:
        return InvalidInput(f"node '{node.name}' ({node.op_type}) cannot be converted to PyTorch: {why}; "
                            "prune or distill this model in PyTorch (import its torch.export .pt2), or use the "
                            "passes that work on ONNX directly (clip, prune-unstructured, low-rank, quantize)")

    def _step(self, node: Any, taken: set[str]) -> Callable[[dict[str, torch.Tensor]], None]:
        op, a, ins, out = node.op_type, _attrs(node), list(node.input), node.output[0]
        if op == "Conv":
            return self._conv(node, a, taken)
        if op == "Gemm":
            if a.get("transA", 0) or ins[1] not in self.consts:
                raise self._refuse(node, "only x @ W with W an initializer is supported")
            w = self.consts[ins[1]] * float(a.get("alpha", 1.0))
            w = w if a.get("transB", 0) else w.T
            b = self.consts[ins[2]] * float(a.get("beta", 1.0)) if len(ins) > 2 and ins[2] else None
            if b is not None and b.shape != (w.shape[0],):
                raise self._refuse(node, f"bias of shape {list(b.shape)}")
            return self._linear(node, taken, w, b, ins[0], out)
        if op == "MatMul" and ins[1] in self.consts and self.consts[ins[1]].ndim == 2:
            return self._linear(node, taken, self.consts[ins[1]].T, None, ins[0], out)
        if op == "BatchNormalization":
            scale, bias, mean, var = (self.consts[n] for n in ins[1:5])
            bn = nn.BatchNorm2d(len(scale), eps=float(a.get("epsilon", 1e-5))).eval()
            bn.weight, bn.bias = nn.Parameter(torch.from_numpy(scale.copy())), nn.Parameter(torch.from_numpy(bias.copy()))
            bn.running_mean.copy_(torch.from_numpy(mean)), bn.running_var.copy_(torch.from_numpy(var))
            name = _layer_name(node, taken)
            self._add(name, bn)
            return lambda env: env.__setitem__(out, getattr(self, name)(env[ins[0]]))
        if op in ("MaxPool", "AveragePool"):
            k = tuple(a["kernel_shape"])
            pads = _pads(a.get("pads"), len(k))
            if pads is None or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or any(d != 1 for d in a.get("dilations", [1])):
                raise self._refuse(node, "asymmetric or automatic padding, or dilation")
            stride, ceil = tuple(a.get("strides", [1] * len(k))), bool(a.get("ceil_mode", 0))
            if op == "MaxPool":
                fn = lambda x: nn.functional.max_pool2d(x, k, stride, pads, ceil_mode=ceil)  # noqa: E731
            else:
                inc = bool(a.get("count_include_pad", 0))
                fn = lambda x: nn.functional.avg_pool2d(x, k, stride, pads, ceil_mode=ceil, count_include_pad=inc)  # noqa: E731
            return lambda env: env.__setitem__(out, fn(env[ins[0]]))
        if op == "GlobalAveragePool":
            return lambda env: env.__setitem__(out, nn.functional.adaptive_avg_pool2d(env[ins[0]], 1))
        if op == "Flatten":
            axis = int(a.get("axis", 1))
            if axis != 1:
                raise self._refuse(node, f"Flatten axis {axis} (only 1)")
            return lambda env: env.__setitem__(out, torch.flatten(env[ins[0]], 1))
        if op == "Reshape":
            if ins[1] not in self.consts:
                raise self._refuse(node, "the target shape is computed at run time")
            shape = [int(d) for d in self.consts[ins[1]]]
            if len(shape) == 2 and shape[0] in (0, -1):  # [batch, rest]; the parity check holds it to that
                return lambda env: env.__setitem__(out, torch.flatten(env[ins[0]], 1))
            raise self._refuse(node, f"Reshape to {shape} (only flattening to [batch, -1])")
        if op in ("Softmax", "LogSoftmax"):
            axis = int(a.get("axis", -1))
            fn = torch.softmax if op == "Softmax" else torch.log_softmax
            return lambda env: env.__setitem__(out, fn(env[ins[0]], axis))
        if op == "LeakyRelu":
            slope = float(a.get("alpha", 0.01))
            return lambda env: env.__setitem__(out, nn.functional.leaky_relu(env[ins[0]], slope))
        if op == "Gelu":
            approx = a.get("approximate", b"none")
            approx = approx.decode() if isinstance(approx, bytes) else approx
            return lambda env: env.__setitem__(out, nn.functional.gelu(env[ins[0]], approximate=approx))
        if op in ELEMENTWISE:
            fn = ELEMENTWISE[op]
            return lambda env: env.__setitem__(out, fn(env[ins[0]]))
        if op in BINARY and len(ins) == 2:
            fn2 = BINARY[op]
            return lambda env: env.__setitem__(out, fn2(self._get(env, ins[0]), self._get(env, ins[1])))
        raise self._refuse(node, f"the converter knows {', '.join(SUPPORTED)}")

    def _conv(self, node: Any, a: dict[str, Any], taken: set[str]) -> Callable[[dict[str, torch.Tensor]], None]:
        ins, out = list(node.input), node.output[0]
        if ins[1] not in self.consts or self.consts[ins[1]].ndim != 4:
            raise self._refuse(node, "only 2-D convolutions with constant weights are supported")
        w = self.consts[ins[1]]
        pads = _pads(a.get("pads"), 2)
        if pads is None or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self._refuse(node, "asymmetric or automatic padding")
        groups = int(a.get("group", 1))
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
                         padding=pads, dilation=tuple(a.get("dilations", [1, 1])), groups=groups,
                         bias=len(ins) > 2 and bool(ins[2]))
        conv.weight = nn.Parameter(torch.from_numpy(w.copy()))
        if conv.bias is not None:
            conv.bias = nn.Parameter(torch.from_numpy(self.consts[ins[2]].copy()))
        name = _layer_name(node, taken)
        self._add(name, conv)
        return lambda env: env.__setitem__(out, getattr(self, name)(env[ins[0]]))

    def _add(self, name: str, layer: nn.Module) -> None:
        self.add_module(name, layer)
        self.layers.append(name)

    def _get(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        return env[name] if name in env else self._const(name)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.inputs, args, strict=True))
        for step in self.steps:
            step(env)
        return tuple(env[o] for o in self.outputs)


def to_torch(artifact: Artifact, ctx: Context, pass_name: str) -> Artifact:
    """The ONNX artifact as a torch.export module (an aten graph), checked against ONNX Runtime."""
    import onnx

    assert artifact.onnx_path is not None
    try:
        module = FromOnnx(onnx.load(str(artifact.onnx_path))).eval()
    except InvalidInput as e:
        raise InvalidInput(f"pass '{pass_name}' needs the model in PyTorch: {e.message}") from None
    for p in module.parameters():
        p.requires_grad_(False)
    sample = ctx.sample(artifact.signature, 8)
    args = tuple(torch.from_numpy(sample[t.name]) for t in artifact.signature.inputs)
    dims = tuple({i: torch.export.Dim.AUTO for i, d in enumerate(t.shape) if d == -1} for t in artifact.signature.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, args, dynamic_shapes=(dims,))  # forward(*inputs): one level down
    out = Artifact("torch", artifact.signature, module=program_module(program), extra={})
    worst = check_parity(f"pass '{pass_name}': converting the ONNX model to PyTorch",
                         run_artifact(artifact, sample, ctx.threads), run_artifact(out, sample), 1e-4, 1e-4)
    ctx.note(f"{pass_name}: the ONNX graph was converted to PyTorch ({len(module.layers)} layers) to change its "
             f"shape; largest difference from ONNX Runtime {worst.max_abs_diff:.2g}")
    return out
