"""A tied embedding in ONNX files. The TorchScript exporter writes a weight shared by an embedding
and an output projection (GPT-2's lm_head = wte) twice: once as the Gather's table W [V, H], once
as the MatMul's W^T [H, V]. For a pruned GPT-2 the two copies are most of the file. Saved results
store W once, the head reading `Transpose(W)`: ONNX Runtime folds that Transpose into a constant at
load, so the session runs the same graph as before (measured: the head's latency is unchanged).
Passes, which look for weights among initializers, read the graph with the copy put back."""

from __future__ import annotations

from typing import Any

TIED = "shipyard_tied"  # name prefix of the Transpose nodes written here


def tied_pairs(model: Any) -> list[tuple[str, str]]:
    """(embedding table, output projection weight) fp initializer pairs holding the same numbers,
    transposed: a Gather on W [V, H] (axis 0) and a MatMul by W^T [H, V]."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
              and not any(a.name == "axis" and a.i != 0 for a in n.attribute) and len(inits[n.input[0]].dims) == 2}
    heads = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1
             and n.input[1] in inits and len(inits[n.input[1]].dims) == 2}
    pairs = []
    for t in sorted(tables):
        for h in sorted(heads - {t}):
            if list(inits[h].dims) == list(reversed(inits[t].dims)) and inits[h].data_type == inits[t].data_type \
                    and (numpy_helper.to_array(inits[h]) == numpy_helper.to_array(inits[t]).T).all():
                pairs.append((t, h))
                break
    return pairs


def store_tied_once(model: Any) -> list[str]:
    """Drop each tied head weight W^T and let its readers read `Transpose(W)` instead; returns the
    tables now stored once. A head weight that is a graph input or output is left alone."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    exposed = {v.name for v in [*g.input, *g.output]}
    done = []
    for table, head in tied_pairs(model):
        if head in exposed:
            continue
        out = f"{TIED}/{table}_T"
        readers = [n for n in g.node if head in n.input]
        for n in readers:
            for i, name in enumerate(n.input):
                if name == head:
                    n.input[i] = out
        at = min(list(g.node).index(n) for n in readers)
        g.node.insert(at, helper.make_node("Transpose", [table], [out], name=f"{TIED}/{table}/Transpose", perm=[1, 0]))
        g.initializer.remove(inits[head])
        done.append(table)
    return done


def untie(model: Any) -> list[str]:
    """The inverse of `store_tied_once`: each of its Transposes becomes an initializer again (so a
    quantizer sees the head's weight as a weight); returns the tables given their copy back."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    done = []
    for n in [n for n in g.node if n.op_type == "Transpose" and n.name.startswith(f"{TIED}/") and n.input[0] in inits]:
        w = numpy_helper.to_array(inits[n.input[0]]).T.copy()
        g.initializer.append(numpy_helper.from_array(w, n.output[0]))
        g.node.remove(n)
        done.append(n.input[0])
    return done
