"""Editing torch.export graphs (aten-level fx graphs): removing output channels of conv/linear
layers with everything that depends on them, and turning `aten.linear` calls into Linear modules so
module-level passes (weight-only, low-rank) can replace them.

Channel dependencies are found by walking from a layer's output through ops that keep channels in
place (activations, pooling, dropout, batch norm, flatten) to the layers that read it. A layer whose
output reaches anything else (an add, a concat, a reshape, the model output) is left whole: removing
channels there would need the other operands pruned alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten
LAYERS = {aten.conv2d.default, aten.conv1d.default, aten.linear.default}
ELEMENTWISE = {aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default,
               aten.sigmoid.default, aten.tanh.default, aten.hardtanh.default, aten.leaky_relu.default,
               aten.dropout.default, aten.max_pool2d.default, aten.avg_pool2d.default,
               aten.adaptive_avg_pool2d.default, aten.max_pool1d.default, aten.clone.default}
NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
FLATTEN = {aten.flatten.using_ints}


def is_graph(module: Any) -> bool:
    return isinstance(module, fx.GraphModule)


def _param(gm: fx.GraphModule, node: Any) -> tuple[nn.Module, str, torch.Tensor] | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    owner_path, _, attr = str(node.target).rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    return owner, attr, getattr(owner, attr)


def _set(entry: tuple[nn.Module, str, torch.Tensor], value: torch.Tensor) -> None:
    owner, attr, old = entry
    new = nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value.detach().clone()
    setattr(owner, attr, new)


@dataclass
class Group:
    """One prunable layer: its node, and where its channels go."""

    layer: fx.Node
    norms: list[fx.Node] = field(default_factory=list)
    # (consumer layer node, repeat) - repeat > 1 when a flatten spreads a channel over `repeat` inputs
    consumers: list[tuple[fx.Node, int]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.layer.args[1].target).rpartition(".")[0]


def _follow(node: fx.Node, repeat: int, group: Group) -> bool:
    """Walk users of `node`; False when a channel could escape to something we cannot resize."""
    for user in node.users:
        target = user.target
        if user.op == "call_function" and target in LAYERS and user.args[0] is node:
            groups = user.args[6] if target is aten.conv2d.default and len(user.args) > 6 else 1
            if groups != 1:
                return False
            group.consumers.append((user, repeat))
        elif user.op == "call_function" and target in ELEMENTWISE and user.args[0] is node:
            if not _follow(user, repeat, group):
                return False
        elif user.op == "call_function" and target in NORMS and user.args[0] is node:
            group.norms.append(user)
            if not _follow(user, repeat, group):
                return False
        elif user.op == "call_function" and target in FLATTEN and user.args[0] is node:
            start = user.args[1] if len(user.args) > 1 else 0
            shape = node.meta["val"].shape
            if start != 1 or len(shape) < 3:
                return False
            spread = 1
            for d in shape[2:]:
                spread *= int(d)
            if not _follow(user, repeat * spread, group):
                return False
        else:
            return False
    return bool(group.consumers)


def prunable_groups(gm: fx.GraphModule) -> tuple[list[Group], list[str]]:
    """Layers whose output channels can be removed, and the names of those that cannot."""
    groups, fixed = [], []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in LAYERS and _param(gm, node.args[1]):
            g = Group(node)
            (groups if _follow(node, 1, g) else fixed).append(g)
    return groups, [g.name for g in fixed]


def channel_scores(gm: fx.GraphModule, g: Group, importance: str = "l1") -> torch.Tensor:
    """L1 (the usual magnitude criterion) or L2 norm of each output channel's weights."""
    entry = _param(gm, g.layer.args[1])
    assert entry is not None
    w = entry[2].detach().reshape(entry[2].shape[0], -1)
    return w.abs().sum(dim=1) if importance == "l1" else w.pow(2).sum(dim=1).sqrt()


def remove_channels(gm: fx.GraphModule, g: Group, keep: torch.Tensor) -> None:
    """Keep only output channels `keep` (sorted indices) of the group's layer; resize dependants."""
    w = _param(gm, g.layer.args[1])
    assert w is not None
    _set(w, w[2][keep])
    bias = _param(gm, g.layer.args[2]) if len(g.layer.args) > 2 else None
    if bias:
        _set(bias, bias[2][keep])
    for norm in g.norms:
        for arg in norm.args[1:5]:
            entry = _param(gm, arg)
            if entry is not None and entry[2].dim() == 1:
                _set(entry, entry[2][keep])
    for consumer, repeat in g.consumers:
        entry = _param(gm, consumer.args[1])
        assert entry is not None
        cols = (keep[:, None] * repeat + torch.arange(repeat)[None, :]).reshape(-1) if repeat > 1 else keep
        _set(entry, entry[2][:, cols])


def linears_as_modules(module: Any) -> Any:
    """For a torch.export module: each `aten.linear(x, W, b)` on parameters becomes a call of an
    `nn.Linear` submodule holding the same tensors (named after the weight's owner). Other modules
    come back unchanged."""
    if not is_graph(module):
        return module
    gm: fx.GraphModule = module
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.linear.default:
            continue
        w = _param(gm, node.args[1])
        b = _param(gm, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
        if w is None:
            continue
        path = str(node.args[1].target).rpartition(".")[0] or f"linear_{node.name}"
        lin = nn.Linear(w[2].shape[1], w[2].shape[0], bias=b is not None)
        lin.weight = nn.Parameter(w[2].detach().clone())
        if b is not None:
            lin.bias = nn.Parameter(b[2].detach().clone())
        _install(gm, path, lin)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _install(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    owner_path, _, attr = path.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    owner._modules[attr] = module
