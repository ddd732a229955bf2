"""Knowledge distillation: train a smaller student to match the teacher (the input artifact) with

    loss = alpha * CE(student, y) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))

through `shipyard.train.fit` (the one training loop; this pass only builds the student and the
data). The student is either derived from the teacher or given:

- `student: narrow` (default): the teacher with a fraction `width` of its channels kept in every
  conv/linear layer whose outputs can be removed (the structured-pruning graph surgery), or of its
  attention heads and FFN neurons for transformers. It starts from the teacher's strongest channels
  (L1 magnitude) unless `init: random`, which is a much better start than random weights. With
  `parameter_ratio`, the width is lowered (bisection on the real parameter count) until the student
  has at most that fraction of the teacher's parameters: halving every layer does not quarter the
  count, because the first layer's inputs and the last layer's outputs cannot shrink;
- `student: shallow`: transformers only, keep `layers` evenly spaced blocks (DistilBERT-style);
- `student: package.module:factory`: a zero-argument factory returning an `nn.Module` that takes the
  model's inputs by position and returns logits of the teacher's shape (works for ONNX teachers too).

An ONNX teacher with a derived student is converted to PyTorch once (`onnx_torch.py`, checked
against ONNX Runtime) and teaches as a PyTorch module: no ONNX Runtime session runs while torch trains.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from shipyard.errors import InvalidInput
from shipyard.optimize.artifact import Artifact, quiet_session_options, torch_forward
from shipyard.optimize.passes import graph
from shipyard.optimize.passes.base import TORCH, Context, PassConfig, register
from shipyard.optimize.passes.onnx_torch import to_torch
from shipyard.optimize.passes.task_distill import CLASS_TASKS, fit_task_student
from shipyard.optimize.passes.transformer_prune import prune_transformer


class Distill(PassConfig):
    """Train a narrower / shallower (or given) student from the teacher on --train data."""

    name: ClassVar[str] = "distill"
    accepts: ClassVar[frozenset[str] | None] = TORCH | {"onnx"}
    student: str = Field("narrow", description="'narrow' (fewer channels/heads/neurons), 'shallow' "
                         "(transformers: fewer blocks), or 'package.module:factory' returning an nn.Module.")
    width: float = Field(0.5, gt=0.0, le=1.0, description="narrow: fraction of channels (heads, FFN neurons) kept per layer.")
    parameter_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="narrow: the student has at "
                                          "most this fraction of the teacher's parameters (0.25: 4x fewer); "
                                          "the width is lowered below `width` (down to min_width) until it holds.")
    min_width: float = Field(0.25, gt=0.0, le=1.0, description="narrow with parameter_ratio: the narrowest "
                             "width tried; where the ratio needs less, the student keeps `width` and the report says so.")
    layers: int | None = Field(None, ge=1, le=1000, description="shallow: transformer blocks kept (default: half).")
    init: Literal["teacher", "random"] = Field("teacher", description="Derived students: start from the "
                      "teacher's strongest weights ('teacher') or from fresh random weights ('random').")
    alpha: float = Field(0.5, description="Weight of cross-entropy on the labels; 1 - alpha goes to the teacher's soft targets. In [0, 1].")
    temperature: float = Field(2.0, description="Softens teacher and student distributions in the KL term; > 0.")
    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the --train data.")
    lr: float = Field(2e-3, gt=0, le=10, description="Peak learning rate (AdamW, cosine decay).")
    batch_size: int = Field(64, ge=1, le=1 << 20, description="Samples per step.")
    max_samples: int | None = Field(None, ge=1, description="Use only the first N training samples (quick runs).")
    seed: int = Field(0, ge=0, description="Seeds the student's initialisation and the shuffling.")

    # Bounds checked here rather than with ge/le so the message says what the value means and the fix.
    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"alpha is {v}; it weighs the label loss against the teacher's and must lie in "
                             "[0, 1] (0: teacher only, 1: labels only; 0.5 is a common start)")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not 0.0 < v <= 100.0:
            raise ValueError(f"temperature is {v}; it divides the logits, so it must be > 0 (and <= 100); "
                             "1 is plain softmax, 2-4 is usual for distillation")
        return v


class Student(nn.Module):
    """A model (graph module or transformers model) as forward(*inputs) -> first output (logits),
    which is what the train loop calls."""

    def __init__(self, artifact: Artifact, module: nn.Module) -> None:
        super().__init__()
        self.model = module
        self._call = torch_forward(artifact.evolve(module=module))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._call(*inputs)[0]


def _onnx_teacher(artifact: Artifact, threads: int) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact.onnx_path), quiet_session_options(threads),
                                   providers=["CPUExecutionProvider"])
    names = [t.name for t in artifact.signature.inputs]
    output = artifact.signature.outputs[0].name

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: np.ascontiguousarray(x.detach().numpy()) for n, x in zip(names, inputs, strict=True)}
        return torch.from_numpy(np.asarray(session.run([output], feed)[0]))

    return run


def _copy(module: Any) -> Any:
    with warnings.catch_warnings():  # torch's pytree deprecation noise from copying export graphs
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module)


def _narrow(artifact: Artifact, width: float, ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    module = _copy(artifact.module)
    amount = 1.0 - width
    if artifact.is_transformers:
        facts = prune_transformer(module, amount, amount, ctx)
    elif graph.is_graph(module):
        groups, fixed = graph.prunable_groups(module)
        if not groups:
            raise InvalidInput(
                "pass 'distill' cannot derive a narrower student: no layer's channels can be removed "
                f"(layers: {fixed}); give a student factory (student: package.module:factory)")
        channels: dict[str, list[int]] = {}
        for g in groups:
            scores = graph.channel_scores(module, g)
            keep_n = max(1, round(len(scores) * width))
            keep = torch.sort(torch.topk(scores, keep_n).indices).values
            graph.remove_channels(module, g, keep)
            channels[g.name] = [len(scores), keep_n]
        module.recompile()
        facts = {"channels": channels, "kept_whole": fixed}
    else:
        raise InvalidInput(f"pass 'distill' cannot derive a student from a {type(module).__name__}; "
                           "publish the model as torch.export first, or give student: package.module:factory")
    return module, facts


def solve_width(artifact: Artifact, config: Distill, ctx: Context) -> float:
    """The largest width in [min_width, width] whose narrow student has at most `parameter_ratio` of
    the teacher's parameters. The count is a step function of the width that never decreases (each
    layer keeps round(n * width) channels), so bisection finds the edge. Where even `min_width` is
    over the ratio (transformers: the embeddings cannot narrow), the student keeps `width` and the
    report says the ratio was out of reach, rather than being squeezed into a useless model."""
    if config.parameter_ratio is None:
        return config.width
    teacher = _params(artifact.module)
    limit = config.parameter_ratio * teacher
    scratch = Context(workdir=ctx.workdir, threads=ctx.threads)  # trial notes are not the report's

    def count(width: float) -> int:
        return _params(_narrow(artifact, width, scratch)[0])

    if count(config.width) <= limit:
        return config.width
    lo, hi = config.min_width, config.width
    floor = count(lo)
    if floor > limit:
        ctx.note(f"distill: parameter_ratio {config.parameter_ratio} is out of reach for this model: even at "
                 f"min_width {lo} the student keeps {floor / teacher:.0%} of the teacher's parameters (layers "
                 f"that cannot narrow, such as embeddings, keep theirs); the student keeps width {config.width}")
        return config.width
    for _ in range(14):  # 2^-14 of the width: finer than one channel of any layer up to 16k wide
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) <= limit else (lo, mid)
    ctx.note(f"distill: width {lo:.3f} (not {config.width}) keeps the student within parameter_ratio "
             f"{config.parameter_ratio} of the teacher's {teacher} parameters")
    return lo


def _shallow(artifact: Artifact, config: Distill) -> tuple[nn.Module, dict[str, Any]]:
    if not artifact.is_transformers:
        raise InvalidInput("pass 'distill': student 'shallow' (fewer blocks) works on transformers models; "
                           "for this model use student: narrow, or give student: package.module:factory")
    module = _copy(artifact.module)
    owner, attr, key = None, "", ""
    for path, cfg_key in (("bert.encoder", "num_hidden_layers"), ("transformer", "n_layer")):
        try:
            owner = module.get_submodule(path)
        except AttributeError:
            continue
        attr, key = ("layer" if path.endswith("encoder") else "h"), cfg_key
        break
    if owner is None:
        raise InvalidInput(f"pass 'distill': student 'shallow' knows BERT- and GPT-2-style models, not "
                           f"{artifact.extra.get('architecture')}; give student: package.module:factory")
    blocks = getattr(owner, attr)
    n = len(blocks)
    k = config.layers or max(1, n // 2)
    if k >= n:
        raise InvalidInput(f"pass 'distill': layers is {k} but the teacher has only {n} blocks; choose fewer than {n}")
    keep = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [n - 1]
    setattr(owner, attr, nn.ModuleList([blocks[i] for i in keep]))
    setattr(module.config, key, len(keep))
    return module, {"blocks": [n, len(keep)], "kept_blocks": keep}


def _given(spec: str) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise InvalidInput(f"pass 'distill': student {spec!r} is not 'narrow', 'shallow' or an importable "
                           f"'package.module:factory' ({e})") from None
    student = factory()
    if not isinstance(student, nn.Module):
        raise InvalidInput(f"pass 'distill': student factory {spec} returned a {type(student).__name__}, not an nn.Module")
    return student


def _reinit(module: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()


def _params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@register(Distill)
def distill(artifact: Artifact, config: Distill, ctx: Context) -> Artifact:
    from torch.utils.data import TensorDataset

    from shipyard.train import fit

    data = ctx.train
    if data is None:
        raise InvalidInput("pass 'distill' trains the student on training data, but none was given; pass "
                           "--train zoo:digits-train or --train file.npz (one array per input, plus 'labels')")
    derived = ":" not in config.student
    if derived and config.student not in ("narrow", "shallow"):
        raise InvalidInput(f"pass 'distill': student {config.student!r} is not 'narrow', 'shallow' or 'package.module:factory'")
    if config.min_width > config.width:
        raise InvalidInput(f"pass 'distill': min_width {config.min_width} is above width {config.width}; "
                           "min_width is the narrowest the parameter_ratio search may go, so keep it <= width")
    if config.parameter_ratio is not None and config.student != "narrow":
        raise InvalidInput(f"pass 'distill': parameter_ratio sizes a 'narrow' student, but student is "
                           f"{config.student!r}; drop parameter_ratio or use student: narrow")
    if derived and artifact.kind == "onnx":  # the student is derived in PyTorch: converted once, checked
        artifact = to_torch(artifact, ctx, config.name)
    if derived:
        if config.student == "narrow":
            width = solve_width(artifact, config, ctx)
            raw, facts = _narrow(artifact, width, ctx)
            facts["width"] = width
        else:
            raw, facts = _shallow(artifact, config)
        if config.init == "random":
            _reinit(raw, config.seed)
        student: nn.Module = Student(artifact, raw)
        for p in student.parameters():
            p.requires_grad_(True)
        out = artifact.evolve(module=raw, extra={"save_as": "torch-export"} if artifact.is_transformers else {})
    else:
        torch.manual_seed(config.seed)
        raw = _given(config.student)
        student, facts = raw, {"factory": config.student}
        out = Artifact("torch", artifact.signature, module=raw, extra={})
    teacher: Any = Student(artifact, artifact.module) if artifact.kind == "torch" else _onnx_teacher(artifact, ctx.threads)
    names = [t.name for t in artifact.signature.inputs]
    n = min(len(data), config.max_samples or len(data))
    inputs = [torch.from_numpy(np.ascontiguousarray(data.inputs[k][:n])) for k in names]
    with torch.inference_mode():
        probe_t, probe_s = teacher(*[x[:2] for x in inputs]), student(*[x[:2] for x in inputs])
    if probe_t.shape != probe_s.shape:
        raise InvalidInput(f"pass 'distill': the student's logits have shape {list(probe_s.shape)} but the "
                           f"teacher's have {list(probe_t.shape)}; the student must predict the same classes")
    if ctx.task not in CLASS_TASKS:
        labels = None
    elif data.labels is not None:
        labels = torch.from_numpy(np.asarray(data.labels[:n])).long()
    else:  # no labels: the teacher's predictions are the hard targets too
        with torch.inference_mode():
            labels = torch.cat([teacher(*[x[i:i + 256] for x in inputs]).argmax(-1) for i in range(0, n, 256)])
        ctx.note(f"distill: {data.name} has no labels; the teacher's predictions serve as the hard targets")
    train_cfg = {
        "epochs": config.epochs, "seed": config.seed, "threads": ctx.threads, "progress": False,
        "data": {"batch_size": config.batch_size}, "optimizer": {"lr": config.lr},
        "distill": {"teacher": "optimize-input", "alpha": config.alpha, "temperature": config.temperature},
        "output_dir": str(ctx.workdir / "distill"),
    }
    # fit sets process-wide torch settings; put them back so later passes and the measuring see ours.
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if ctx.task in CLASS_TASKS:
            result = fit(train_cfg, model=student, data=TensorDataset(*inputs, labels), teacher=teacher)
        else:  # binary, multi-label, regression, embeddings: the task's loss (passes/task_distill.py)
            result = fit_task_student(student, teacher, inputs, data, n, config, ctx, train_cfg)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    before, after = _params(artifact.module) if artifact.kind == "torch" else None, _params(raw)
    facts.update({"student": config.student, "parameters_teacher": before, "parameters_student": after,
                  "train_samples": n, "epochs": config.epochs, "steps": result.steps,
                  "final_train_loss": result.metrics.get("train_loss"),
                  "history": [{k: r[k] for k in ("epoch", "train_loss")} for r in result.history]})
    ctx.facts["distill"] = facts
    ctx.note(f"distilled a {config.student} student ({after} parameters"
             + (f", {before / after:.1f}x fewer than the teacher" if before else "")
             + f") for {config.epochs} epochs on {n} samples of {data.name} with shipyard.train "
             f"(alpha {config.alpha}, T {config.temperature}; final train loss {facts['final_train_loss']:.4f})")
    return out
