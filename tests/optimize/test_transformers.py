"""Tiny transformers (random weights): ONNX export with fusions, int8, head/FFN pruning; no labels,
so accuracy is agreement with the parent."""

from __future__ import annotations

import numpy as np
import onnx

from shipyard.optimize.runner import optimize
from shipyard.repository import Repository
from shipyard.runtimes import RuntimeOptions, runtime_for
from tests.optimize.conftest import FAST, token_data


def test_bert_export_fuses_attention_and_int8_dynamic(tiny_copy: Repository) -> None:
    result = optimize(tiny_copy.root, "bert:1", preset_name="int8-dynamic", eval_data=token_data(), **FAST)
    fused = result.report["facts"]["onnx_fusions"]
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization") == 4
    assert result.report["accuracy_is"] == "agreement with v1's predictions"
    # the imported v1 recorded no metrics; the plot still shows it, with this run's figures
    html = (tiny_copy.path("bert", result.manifest.version) / "report.html").read_text()
    assert html.count("<circle") == 2
    new = result.report["rows"][-1]["metrics"]
    assert new["agreement"] >= 0.9 and "loss" in new
    folder = tiny_copy.path("bert", result.manifest.version)
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "QAttention" in ops and {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # int8 fused attention
    # dynamic batch and sequence axes: the published model runs at other shapes than exported
    rt = runtime_for(result.manifest, folder, RuntimeOptions(threads=1))
    rt.load()
    out = rt.infer({"input_ids": np.ones((3, 11), np.int64), "attention_mask": np.ones((3, 11), np.int64)}, ["logits"])
    assert out["logits"].shape == (3, 3)


def test_bert_heads_and_ffn_pruned_physically(tiny_copy: Repository) -> None:
    result = optimize(tiny_copy.root, "bert:1", recipe=[{"pass": "prune-structured", "heads": 0.5, "ffn": 0.75}],
                      eval_data=token_data(), **FAST)
    pruned = result.report["facts"]["prune_structured"]["pruned"]
    assert pruned["bert.encoder.layer.0.attention.heads"] == [4, 2]
    assert pruned["bert.encoder.layer.1.ffn"] == [64, 16]
    assert result.manifest.format == "torch-export"
    rows = result.report["rows"]
    assert rows[-1]["metrics"]["parameters"] < rows[0]["metrics"]["parameters"]


def test_gpt2_conv1d_heads_and_ffn(tiny_copy: Repository) -> None:
    result = optimize(tiny_copy.root, "gpt2:1", preset_name="prune-structured-50", eval_data=token_data(), **FAST)
    pruned = result.report["facts"]["prune_structured"]["pruned"]
    assert pruned["transformer.h.0.attn.heads"] == [4, 2]
    assert pruned["transformer.h.1.mlp.ffn"] == [128, 64]
    m = result.report["rows"][-1]["metrics"]
    assert 0.3 < m["agreement"] <= 1.0  # random weights: close to, not equal to, the parent


def test_export_to_torch_export_checks_parity(tiny_copy: Repository) -> None:
    result = optimize(tiny_copy.root, "bert:1", recipe=[{"pass": "export", "format": "torch-export"}],
                      eval_data=token_data(), **FAST)
    assert result.manifest.format == "torch-export"
    assert result.report["facts"]["parity"][0]["max_abs_diff"] < 1e-4
    assert result.report["rows"][-1]["metrics"]["agreement"] == 1.0


def test_pruned_gpt2_counts_its_tied_embedding_once(tiny_copy: Repository) -> None:
    # The pass alone, published as torch.export (the preset also exports to ONNX).
    result = optimize(tiny_copy.root, "gpt2:1", recipe=[{"pass": "prune-structured", "amount": 0.5}],
                      eval_data=token_data(), **FAST)
    assert result.manifest.format == "torch-export"
    parent, new = (r["metrics"] for r in (result.report["rows"][0], result.report["rows"][-1]))
    # Per layer (n_embd 32, head_dim 8): c_attn loses 48 rows (+bias), attn c_proj 16 columns, c_fc 64
    # rows (+bias), mlp c_proj 64 columns. lm_head is the token embedding: counted once, as v1's.
    removed = 2 * ((48 * 32 + 48) + 16 * 32 + (64 * 32 + 64) + 64 * 32)
    assert new["parameters"] == parent["parameters"] - removed


def test_lowrank_leaves_a_tied_lm_head_whole(tiny_copy: Repository) -> None:
    result = optimize(tiny_copy.root, "gpt2:1", recipe=[{"pass": "low-rank", "ratio": 0.25}],
                      eval_data=token_data(), **FAST)
    facts = result.report["facts"]["low_rank"]
    assert facts["tied"] == ["lm_head"] and "lm_head" not in facts["factored"]
    assert any("tied to another layer" in n for n in result.report["notes"])
    parent, new = (r["metrics"] for r in (result.report["rows"][0], result.report["rows"][-1]))
    assert new["parameters"] < parent["parameters"]


def test_versions_are_timed_side_by_side(tiny_copy: Repository) -> None:
    from shipyard.optimize.measure import measure_side_by_side

    data = token_data()
    bert = tiny_copy.manifest("bert", 1)
    folder = tiny_copy.path("bert", 1)
    got = measure_side_by_side({"a": (folder, bert.format, bert.extra), "b": (folder, bert.format, bert.extra)},
                               bert.signature, data, threads=1, reference_key="a", budget_s=0.05, rounds=3)
    for k in ("a", "b"):
        assert got[k]["agreement"] == 1.0
        assert got[k]["latency_b1_p50_ms"] > 0 and got[k]["latency_b32_p50_ms"] > 0
        assert got[k]["latency_b1_p99_ms"] >= got[k]["latency_b1_p50_ms"]
    assert got["a"]["size_bytes"] == got["b"]["size_bytes"]


def test_gpt2_int8_dynamic_stores_its_tied_embedding_once(tiny_copy: Repository) -> None:
    from onnx import numpy_helper

    result = optimize(tiny_copy.root, "gpt2:1", preset_name="int8-dynamic", eval_data=token_data(), **FAST)
    model = onnx.load(str(tiny_copy.path("gpt2", result.manifest.version) / "model.onnx"))
    int8 = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type in (2, 3)}
    tables = [a for a in int8.values() if a.size == 100 * 32]  # vocab 100 x n_embd 32
    assert len(tables) == 1 and tables[0].shape == (32, 100)  # one copy: the lm_head's [H, V]
    assert not any(n.endswith("wte.weight_quantized") for n in int8)
    ops = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in int8]
    assert {n.input[0] for n in ops} >= {"model.transformer.wpe.weight_quantized"}  # positions: int8 too
    assert any("stored once" in n for n in result.report["notes"])
    new = result.report["rows"][-1]["metrics"]
    assert new["agreement"] >= 0.9
    # at other shapes than exported: the rewritten lookup keeps batch and sequence dynamic
    rt = runtime_for(result.manifest, tiny_copy.path("gpt2", result.manifest.version), RuntimeOptions(threads=1))
    rt.load()
    out = rt.infer({"input_ids": np.ones((3, 5), np.int64), "attention_mask": np.ones((3, 5), np.int64)}, ["logits"])
    assert out["logits"].shape == (3, 5, 100)


def test_tied_lookup_matches_the_quantized_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The rewrite on a two-node graph: lookup from the head's int8 weight equals W[ids] within
    the int8 step, and the table is stored once."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from shipyard.optimize.passes.quantize import share_tied_embeddings, tied_embeddings

    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["W", "ids"], ["emb"], axis=0),
         helper.make_node("Relu", ["emb"], ["hidden"]),  # GPT-2: add positions, blocks, layer norm
         helper.make_node("MatMul", ["hidden", "Wt"], ["logits"])], "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["b", "s", 16]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 50])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ascontiguousarray(w.T), "Wt")])
    src, out = tmp_path / "tied.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    ties = tied_embeddings(src)
    assert ties == [("W", "Wt")]
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["Gather", "MatMul"])
    assert share_tied_embeddings(out, ties) == ["W"]
    names = {t.name for t in onnx.load(str(out)).graph.initializer}
    assert "W_quantized" not in names and "Wt_quantized" in names
    ids = rng.integers(0, 50, (2, 7))
    emb = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["emb"], {"ids": ids})[0]
    step = np.abs(w).max(axis=1)[ids][..., None] / 127  # per-row int8 step
    assert emb.shape == (2, 7, 16) and (np.abs(emb - w[ids]) <= step / 2 + 1e-6).all()


def test_pruned_bert_exports_with_attention_fused_for_the_heads_left(tiny_copy: Repository, tmp_path) -> None:  # type: ignore[no-untyped-def]
    recipe = [{"pass": "prune-structured", "amount": 0.5}, {"pass": "export"}, {"pass": "quantize", "mode": "dynamic"}]
    result = optimize(tiny_copy.root, "bert:1", recipe=recipe, eval_data=token_data(), **FAST)
    assert result.report["facts"]["onnx_fusions"].get("Attention") == 2
    assert result.report["facts"]["parity"][0]["pass"] == "export"
    new = result.report["rows"][-1]["metrics"]
    assert result.manifest.format == "onnx" and new["parameters"] < result.report["rows"][0]["metrics"]["parameters"]
    # Heads of 16 (hidden 64): told the config's 4 heads, ORT's fused Attention split each of the 2
    # heads left in two, 6.5e-6 off on logits of 0.06 (1e-4 relative; 2e-3 on a 4 x 256 BERT).
    import torch
    import transformers

    from shipyard.optimize.artifact import Artifact, run_artifact
    from shipyard.optimize.passes.base import Context
    from shipyard.optimize.passes.export import Export, export
    from shipyard.optimize.passes.transformer_prune import prune_transformer

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64)).eval()
    ctx = Context(workdir=tmp_path, eval_data=token_data())
    prune_transformer(model, 0.5, 0.5, ctx)
    art = Artifact("torch", tiny_copy.manifest("bert", 1).signature, module=model,
                   extra={"architecture": "BertForSequenceClassification"})
    sample = ctx.sample(art.signature, 8)
    before = run_artifact(art, sample)["logits"]
    onnx_art = export(art, Export(), ctx)
    assert ctx.facts["onnx_fusions"].get("Attention") == 2
    assert np.abs(run_artifact(onnx_art, sample)["logits"] - before).max() < 1e-6


def test_pruned_gpt2_onnx_stores_its_tied_embedding_once(tiny_copy: Repository) -> None:
    """The exporter writes GPT-2's wte twice (Gather table [V, H], lm_head MatMul weight [H, V]);
    a pruned GPT-2 is mostly those two copies. The saved file holds one, and runs as the torch model."""
    from shipyard.optimize.parity import check_parity

    pruned = optimize(tiny_copy.root, "gpt2:1", recipe=[{"pass": "prune-structured", "amount": 0.5}],
                      eval_data=token_data(), **FAST)  # torch-export: the same pruning, not exported
    result = optimize(tiny_copy.root, "gpt2:1", preset_name="prune-structured-50", eval_data=token_data(), **FAST)
    folder = tiny_copy.path("gpt2", result.manifest.version)
    model = onnx.load(str(folder / "model.onnx"))
    tables = [t for t in model.graph.initializer if sorted(t.dims) == [32, 100]]  # vocab 100 x n_embd 32
    assert len(tables) == 1 and list(tables[0].dims) == [100, 32]
    readers = {n.op_type for n in model.graph.node if tables[0].name in n.input}
    assert readers == {"Gather", "Transpose"}
    assert result.report["facts"]["tied_stored_once"] == [tables[0].name]
    assert any("stored once" in n for n in result.report["notes"])
    # Counted once: at most the pruned torch count (the export also shares the random model's equal
    # layer-norm and bias constants), and more than that less the table.
    parent, torch_new, new = (r["metrics"]["parameters"] for r in
                              (result.report["rows"][0], pruned.report["rows"][-1], result.report["rows"][-1]))
    assert torch_new - 100 * 32 < new <= torch_new < parent
    inputs = {"input_ids": np.random.default_rng(1).integers(0, 100, (3, 5)),
              "attention_mask": np.ones((3, 5), np.int64)}
    outs = []
    for r in (pruned, result):
        rt = runtime_for(r.manifest, tiny_copy.path("gpt2", r.manifest.version), RuntimeOptions(threads=1))
        rt.load()
        outs.append(rt.infer(inputs, ["logits"]))
    check_parity("pruned GPT-2, torch vs ONNX stored once", outs[0], outs[1], 1e-4, 1e-3)
    # An ONNX source stored this way: the quantizer sees the head's weight again, and int8-dynamic
    # stores the tied table once as before (the head's int8 [H, V]).
    q = optimize(tiny_copy.root, f"gpt2:{result.manifest.version}", preset_name="int8-dynamic",
                 eval_data=token_data(), **FAST)
    qmodel = onnx.load(str(tiny_copy.path("gpt2", q.manifest.version) / "model.onnx"))
    int8 = [list(t.dims) for t in qmodel.graph.initializer if t.data_type == onnx.TensorProto.INT8 and
            sorted(t.dims) == [32, 100]]
    assert int8 == [[32, 100]] and not any(n.name.startswith("shipyard_tied/") for n in qmodel.graph.node)
    assert q.report["rows"][-1]["metrics"]["agreement"] >= 0.9


def test_tied_head_stored_once_and_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """store_tied_once drops W^T and reads Transpose(W); untie puts the initializer back; a head
    that is not exactly W^T is left alone."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from shipyard.optimize.tied import store_tied_once, untie

    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 16)).astype(np.float32)

    def graph(wt: np.ndarray) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("Gather", ["W", "ids"], ["emb"], axis=0),
             helper.make_node("MatMul", ["emb", "Wt"], ["logits"])], "tied",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 50])],
            [numpy_helper.from_array(w, "W"), numpy_helper.from_array(wt, "Wt")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]

    ids = rng.integers(0, 50, (2, 7))
    model = graph(np.ascontiguousarray(w.T))
    before, size = run(model), model.ByteSize()
    assert store_tied_once(model) == ["W"]
    assert [t.name for t in model.graph.initializer] == ["W"] and model.ByteSize() < size - w.nbytes * 0.9
    onnx.checker.check_model(model)
    assert np.array_equal(run(model), before)
    assert untie(model) == ["W"]
    assert sorted(t.name for t in model.graph.initializer) == ["W", "shipyard_tied/W_T"]
    assert not any(n.op_type == "Transpose" for n in model.graph.node) and np.array_equal(run(model), before)
    off = w.T.copy()
    off[0, 0] += 1e-3
    assert store_tied_once(graph(off)) == []
