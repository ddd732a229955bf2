"""Export: torch -> ONNX (TorchScript exporter, dynamic batch axis, ORT graph optimizations with the
transformer fusions for BERT/GPT-2 style models) or torch -> torch.export program. Both are
conversions: the runner checks them against their source within `atol + rtol * max|output|`."""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar, Literal

from pydantic import Field

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import (
    Artifact,
    _positional,
    export_program,
    program_module,
    quiet_session_options,
    set_mode,
)
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register

# transformers architecture prefix -> ORT transformer optimizer model type.
FUSIONS = {"Bert": "bert", "Roberta": "bert", "DistilBert": "bert", "GPT2": "gpt2", "Electra": "bert"}


class Export(PassConfig):
    """Convert a PyTorch model to ONNX or to a torch.export program."""

    name: ClassVar[str] = "export"
    accepts: ClassVar[frozenset[str] | None] = TORCH
    lossless: ClassVar[bool] = True
    format: Literal["onnx", "torch-export"] = Field("onnx", description="Target format.")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset.")
    optimize: bool = Field(True, description="Apply ONNX Runtime graph optimizations (and transformer fusions) offline.")
    # ORT's fused attention and layer norms reorder fp32 sums, so the drift grows with the outputs'
    # magnitude (2.6e-4 seen on BERT logits of magnitude ~1); a broken conversion is off by a
    # good fraction of that magnitude. Tolerance: atol + rtol * max|source output|.
    atol: float = Field(1e-4, ge=0, le=1.0, description="Absolute part of the allowed |difference| from the source on sample inputs.")
    rtol: float = Field(1e-3, ge=0, le=0.1, description="Relative part: times the largest |output| of the source.")


def _onnx(artifact: Artifact, config: Export, ctx: Context) -> Artifact:
    import torch

    sample = ctx.sample(artifact.signature, 2)
    args = tuple(torch.from_numpy(sample[t.name]) for t in artifact.signature.inputs)
    if artifact.is_transformers and hasattr(artifact.module, "set_attn_implementation"):
        # SDPA traces into a graph ORT's optimizer cannot match; the eager attention fuses into
        # its Attention op. Same numbers (the parity check below holds it to that).
        try:
            artifact.module.set_attn_implementation("eager")
        except (ValueError, ImportError):
            pass
    module = _positional(artifact.module, artifact.signature) if artifact.is_transformers else artifact.module
    dynamic = {t.name: {i: f"{t.name}_dim{i}" if i else "batch" for i, s in enumerate(t.shape) if s == -1}
               for t in [*artifact.signature.inputs, *artifact.signature.outputs]}
    path = ctx.path("export", ".onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                set_mode(module, False), args, str(path),
                input_names=[t.name for t in artifact.signature.inputs],
                output_names=[t.name for t in artifact.signature.outputs],
                dynamic_axes=dynamic, opset_version=config.opset, dynamo=False,
            )
    except Exception as e:  # the exporter raises many types; name the unsupported op for the user
        raise InvalidInput(
            f"pass 'export' (onnx, opset {config.opset}) failed: {str(e).splitlines()[0][:300]}; "
            "try another opset, or export to torch-export instead") from None
    ctx.note(f"ONNX exported with opset {config.opset}, dynamic axes " +
             ", ".join(f"{k}:{list(v.values())}" for k, v in dynamic.items() if v))
    if config.optimize:
        path = _optimize(path, artifact, ctx)
    return Artifact("onnx", artifact.signature, onnx_path=path,
                    extra={k: v for k, v in artifact.extra.items() if k != "architecture"})


def _optimize(path: Any, artifact: Artifact, ctx: Context) -> Any:
    import onnxruntime as ort

    arch = str(artifact.extra.get("architecture", ""))
    model_type = next((t for prefix, t in FUSIONS.items() if arch.startswith(prefix)), None)
    out = ctx.path("optimized", ".onnx")
    if model_type:
        from onnxruntime.transformers.optimizer import optimize_model

        heads, hidden = attention_shape(artifact.module)
        # Its logger warns that a pruned width differs from the q/k/v inputs' width: expected here.
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = optimize_model(str(path), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1)
        finally:
            logging.disable(logging.NOTSET)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(out))
        ctx.facts["onnx_fusions"] = fused
        ctx.note(f"ORT transformer optimizer ({model_type}) fused: " +
                 (", ".join(f"{k} x{v}" for k, v in fused.items()) or "nothing"))
        return out
    # Basic only: standard-ONNX rewrites (constant folding, redundant nodes), so quantizers can
    # still read the graph and it stays portable; the CPU-specific fusions are applied at load.
    so = quiet_session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    del session
    ctx.note("ORT basic graph optimizations applied offline (constant folding, redundant nodes); the rest at load")
    return out


def attention_shape(model: Any) -> tuple[int, int]:
    """(heads, attention width = heads x head size) for ORT's attention fusion, read from the
    attention modules: after head pruning the config's figures are stale, and a fused Attention
    told 4 heads where 2 remain splits each head in two (seen as a 2e-3 relative drift of BERT
    logits; with the modules' figures the drift is 1e-7 as unpruned). (0, 0), "detect from the
    graph", when layers differ."""
    found = set()
    for m in model.modules():
        if hasattr(m, "num_attention_heads") and hasattr(m, "all_head_size"):  # BERT-style self-attention
            found.add((int(m.num_attention_heads), int(m.all_head_size)))
        elif hasattr(m, "num_heads") and hasattr(m, "split_size") and hasattr(m, "c_attn"):  # GPT-2
            found.add((int(m.num_heads), int(m.split_size)))
    if len(found) == 1:
        return found.pop()
    if found:
        return 0, 0
    cfg = model.config
    return (int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0)),
            int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0)))


@register(Export)
def export(artifact: Artifact, config: Export, ctx: Context) -> Artifact:
    if config.format == "onnx":
        return _onnx(artifact, config, ctx)
    import torch

    path = ctx.path("export", ".pt2")
    export_program(artifact, ctx.sample(artifact.signature, 2), path)
    module = program_module(torch.export.load(str(path)))
    return Artifact("torch", artifact.signature, module=module,
                    extra={k: v for k, v in artifact.extra.items() if k != "architecture"})
