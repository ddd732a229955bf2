"""What a model's outputs mean: its task, and for each task the metrics, the loss and the agreement
with a reference (the parent version) that evaluation, distillation, the search and shadow traffic
use. numpy only at import; the torch losses import torch when called.

    task = get("binary")
    task.evaluate(outputs, labels=y, reference=parent_outputs)   # {"accuracy", "auc", "loss", "agreement"}
    task.agree(outputs, parent_outputs)                          # one bool per sample

Tasks: multiclass (logits or probabilities), binary (one sigmoid unit, or its logit), multilabel
(one independent sigmoid per label), regression, language-modelling ([B, T, V] logits, labels
[B, T]), embeddings (vectors compared by cosine). `infer` picks one from the signature, the labels
and the outputs; `--task` overrides it. A copy of the parent agrees 100% under every task.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput

TASKS = ("multiclass", "binary", "multilabel", "regression", "language-modelling", "embeddings")
REGRESSION_RTOL = 0.05  # relative error (L2 per sample) under which two regression answers agree
COSINE_AGREE = 0.99  # cosine similarity at or above which two embeddings agree
_EPS = 1e-7


def _is_prob(x: np.ndarray, rows: bool) -> bool:
    """Outputs already in [0, 1] (and, for `rows`, summing to 1 along the last axis)."""
    if x.size == 0 or x.min() < 0 or x.max() > 1:
        return False
    return not rows or bool(np.allclose(x.sum(axis=-1), 1.0, atol=1e-3))


def _softmax(z: np.ndarray) -> np.ndarray:
    if _is_prob(z, rows=True):
        return z.astype(np.float64)
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    if _is_prob(z, rows=False):
        return z.astype(np.float64)
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def _bce(p: np.ndarray, t: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean())


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None with one class only."""
    y = labels.reshape(-1).astype(bool)
    s = scores.reshape(-1).astype(np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass(frozen=True)
class Task:
    """One task. `score` is the metric `--max-accuracy-drop` budgets (in points: hundredths)."""

    name: str
    score: str
    describe: str

    # -- per task: overridden below -------------------------------------------------------------
    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def loss(self, out: np.ndarray, target: np.ndarray, soft: bool) -> float:
        """The task's loss against labels, or (`soft`) against a reference's outputs."""
        raise NotImplementedError

    def agree(self, out: np.ndarray, ref: np.ndarray, tol: float | None = None) -> np.ndarray:
        """One bool per sample (per token for language models): does `out` say what `ref` says?"""
        raise NotImplementedError

    def check_labels(self, out: np.ndarray, labels: np.ndarray) -> None:
        """Labels of a shape this task can score; the message names the shapes and the fix."""

    # -- shared ---------------------------------------------------------------------------------
    def evaluate(self, out: np.ndarray, labels: np.ndarray | None = None,
                 reference: np.ndarray | None = None) -> dict[str, Any]:
        """Metrics on labels when given; agreement with `reference` when given; without labels the
        loss is taken against the reference's outputs and 'accuracy' means agreement."""
        m: dict[str, Any] = {}
        if labels is not None:
            self.check_labels(out, labels)
            m.update(self.metrics(out, labels))
            m["loss"] = self.loss(out, labels, soft=False)
        if reference is not None and reference.shape == out.shape:
            m["agreement"] = float(self.agree(out, reference).mean())
            if labels is None:
                m["loss"] = self.loss(out, reference, soft=True)
                if self.score == "accuracy":
                    m["accuracy"] = m["agreement"]
        return m


class Multiclass(Task):
    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        p = _softmax(out).reshape(-1, out.shape[-1])
        y = labels.reshape(-1).astype(np.int64)
        m: dict[str, Any] = {"accuracy": float((p.argmax(-1) == y).mean())}
        if p.shape[-1] > 5:
            top = np.argsort(-p, axis=-1)[:, :5]
            m["top5"] = float((top == y[:, None]).any(axis=1).mean())
        return m

    def loss(self, out: np.ndarray, target: np.ndarray, soft: bool) -> float:
        logp = np.log(np.clip(_softmax(out).reshape(-1, out.shape[-1]), 1e-12, None))
        if soft:
            return float(-(_softmax(target).reshape(logp.shape) * logp).sum(-1).mean())
        return float(-logp[np.arange(len(logp)), target.reshape(-1).astype(np.int64)].mean())

    def agree(self, out: np.ndarray, ref: np.ndarray, tol: float | None = None) -> np.ndarray:
        return np.asarray(out.argmax(-1) == ref.argmax(-1)).reshape(-1)

    def check_labels(self, out: np.ndarray, labels: np.ndarray) -> None:
        if labels.size != out.size // out.shape[-1] or labels.dtype.kind not in "iub":
            raise InvalidInput(f"task {self.name}: labels have shape {list(labels.shape)} ({labels.dtype}) for "
                               f"outputs {list(out.shape)}; give one integer class per sample, or choose "
                               "another --task (regression, multilabel, embeddings)")


class Perplexity(Multiclass):
    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        m = super().metrics(out, labels)
        m["perplexity"] = float(np.exp(self.loss(out, labels, soft=False)))
        return m


class Binary(Task):
    @staticmethod
    def _p(x: np.ndarray) -> np.ndarray:
        return _sigmoid(x).reshape(len(x), -1)

    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        p, y = self._p(out).reshape(-1), labels.reshape(-1).astype(np.float64)
        return {"accuracy": float(((p >= 0.5) == (y >= 0.5)).mean()), "auc": auc(p, y >= 0.5)}

    def loss(self, out: np.ndarray, target: np.ndarray, soft: bool) -> float:
        t = self._p(target) if soft else target.reshape(len(target), -1).astype(np.float64)
        return _bce(self._p(out), t)

    def agree(self, out: np.ndarray, ref: np.ndarray, tol: float | None = None) -> np.ndarray:
        return np.asarray(((self._p(out) >= 0.5) == (self._p(ref) >= 0.5)).all(axis=1))

    def check_labels(self, out: np.ndarray, labels: np.ndarray) -> None:
        if labels.size != out.size or not np.isin(labels, (0, 1)).all():
            raise InvalidInput(f"task {self.name}: labels have shape {list(labels.shape)} for outputs "
                               f"{list(out.shape)}; give one 0/1 label per output unit, or choose another --task")


class Multilabel(Binary):
    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        pred = self._p(out) >= 0.5
        y = labels.reshape(pred.shape) >= 0.5
        tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
        return {"accuracy": float((pred == y).mean()), "f1_macro": float(f1.mean()),
                "f1_per_label": [round(float(v), 4) for v in f1]}


class Regression(Task):
    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        o, y = out.reshape(len(out), -1).astype(np.float64), labels.reshape(len(out), -1).astype(np.float64)
        ss_res = ((y - o) ** 2).sum(0)
        ss_tot = ((y - y.mean(0)) ** 2).sum(0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)
        return {"mse": float(((o - y) ** 2).mean()), "mae": float(np.abs(o - y).mean()), "r2": float(r2.mean())}

    def loss(self, out: np.ndarray, target: np.ndarray, soft: bool) -> float:
        return float(((out.astype(np.float64) - target.reshape(out.shape).astype(np.float64)) ** 2).mean())

    def agree(self, out: np.ndarray, ref: np.ndarray, tol: float | None = None) -> np.ndarray:
        o, r = out.reshape(len(out), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
        err = np.linalg.norm(o - r, axis=1)
        return np.asarray(err <= (REGRESSION_RTOL if tol is None else tol) * np.linalg.norm(r, axis=1) + 1e-9)

    def check_labels(self, out: np.ndarray, labels: np.ndarray) -> None:
        if labels.size != out.size:
            raise InvalidInput(f"task {self.name}: labels have shape {list(labels.shape)} for outputs "
                               f"{list(out.shape)}; give one target value per output value")


class Embeddings(Task):
    @staticmethod
    def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return np.asarray((a * b).sum(1) / np.maximum(norm, 1e-12))

    def metrics(self, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return {"cosine": float(self._cos(out, labels).mean())}

    def loss(self, out: np.ndarray, target: np.ndarray, soft: bool) -> float:
        return float(1 - self._cos(out, target).mean())

    def agree(self, out: np.ndarray, ref: np.ndarray, tol: float | None = None) -> np.ndarray:
        return np.asarray(self._cos(out, ref) >= (COSINE_AGREE if tol is None else tol) - 1e-9)

    def check_labels(self, out: np.ndarray, labels: np.ndarray) -> None:
        Regression.check_labels(self, out, labels)  # type: ignore[arg-type]


_ALL: dict[str, Task] = {
    "multiclass": Multiclass("multiclass", "accuracy", "top-1 accuracy"),
    "binary": Binary("binary", "accuracy", "accuracy at threshold 0.5"),
    "multilabel": Multilabel("multilabel", "accuracy", "per-label accuracy at threshold 0.5"),
    "regression": Regression("regression", "agreement", "agreement: relative error within 5% of the parent"),
    "language-modelling": Perplexity("language-modelling", "accuracy", "top-1 next-token accuracy"),
    "embeddings": Embeddings("embeddings", "agreement", f"agreement: cosine >= {COSINE_AGREE} with the parent"),
}


# The one figure a listing shows for a version of each task: (label, metric key).
HEADLINE: dict[str, tuple[str, str]] = {
    "multiclass": ("accuracy", "accuracy"), "binary": ("AUC", "auc"), "multilabel": ("F1", "f1_macro"),
    "regression": ("R²", "r2"), "language-modelling": ("perplexity", "perplexity"), "embeddings": ("cosine", "cosine"),
}


def headline(task: str | None, metrics: dict[str, Any]) -> str | None:
    """'97.2%' (accuracy) or 'R² 0.931': the figure that says how good a version is, if measured."""
    label, key = HEADLINE.get(task or "", ("accuracy", "accuracy"))
    value = metrics.get(key)
    if not isinstance(value, (int, float)):
        value, label, key = metrics.get("accuracy"), "accuracy", "accuracy"
    if not isinstance(value, (int, float)):
        return None
    return f"{value:.2%}" if key == "accuracy" else f"{label} {value:.4g}"


def get(name: str) -> Task:
    if name not in _ALL:
        raise InvalidInput(f"unknown task {name!r}; --task is one of {', '.join(TASKS)}")
    return _ALL[name]


def check_name(name: str | None) -> str | None:
    return None if name is None else get(name).name


def from_signature(signature: Any) -> str | None:
    """A task read from the signature alone, where it is plain (no data needed); else None."""
    if not signature.outputs:
        return None
    out = signature.outputs[0]
    if "embed" in out.name.lower():
        return "embeddings"
    ints = all(t.datatype.startswith(("INT", "UINT")) for t in signature.inputs)
    if len(out.shape) == 3 and ints:
        return "language-modelling"
    return None


def infer(signature: Any, labels: np.ndarray | None = None, outputs: np.ndarray | None = None) -> tuple[str, str]:
    """(task, why) from the signature, the labels' dtype and shape, and sample outputs."""
    plain = from_signature(signature)
    if plain:
        return plain, "read from the signature"
    units = signature.outputs[0].shape[-1] if signature.outputs and signature.outputs[0].shape else -1
    if outputs is not None and outputs.ndim >= 1:
        units = outputs.shape[-1] if outputs.ndim >= 2 else 1
    per_sample = labels is not None and outputs is not None and len(labels) and len(outputs) and \
        labels.size // len(labels) == outputs.size // len(outputs)
    if labels is not None and per_sample and units > 1:
        if labels.dtype.kind == "f" and not np.isin(labels, (0, 1)).all():
            return "regression", "float labels with the outputs' shape"
        return "multilabel", "0/1 labels with the outputs' shape"
    if labels is not None and labels.dtype.kind == "f" and units > 1 and outputs is None:
        return "regression", "float labels"
    if units == 1:
        if labels is not None and np.isin(labels, (0, 1)).all():
            return "binary", "one output unit and 0/1 labels"
        if outputs is not None and _is_prob(outputs, rows=False):
            return "binary", "one output unit with values in [0, 1]"
        return "regression", "one output unit with values outside [0, 1]"
    return "multiclass", "several output units"


def load_metric(spec: str | Callable[..., Any]) -> tuple[str, Callable[..., Any]]:
    """(name, function) of a user metric: `package.module:function` or a callable."""
    if callable(spec):
        return getattr(spec, "__name__", "metric"), spec
    mod, _, attr = str(spec).partition(":")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise InvalidInput(f"--metric {spec!r} is not an importable 'package.module:function' ({e}); "
                           "put its package on PYTHONPATH") from None
    if not callable(fn):
        raise InvalidInput(f"--metric {spec!r} names a {type(fn).__name__}, not a function")
    return attr, fn


def call_metric(fn: Callable[..., Any], outputs: np.ndarray, labels: np.ndarray | None) -> float:
    """The user metric's value (higher is better); the message names the function on failure."""
    try:
        return float(fn(outputs, labels))
    except Exception as e:  # noqa: BLE001 - user code: say whose it is
        raise InvalidInput(f"user metric {getattr(fn, '__name__', fn)} failed on outputs {list(outputs.shape)}: "
                           f"{type(e).__name__}: {e}") from None


def torch_loss(name: str, out: Any, target: Any, soft: bool) -> Any:
    """The task's loss as a differentiable torch scalar (for distillation and fine-tuning)."""
    import torch
    from torch.nn import functional as F

    def probs(x: Any, rows: bool) -> Any:
        inside = bool((x.min() >= 0) & (x.max() <= 1))
        if rows and inside:
            inside = bool(torch.allclose(x.sum(-1), torch.ones_like(x.sum(-1)), atol=1e-3))
        return inside

    if name in ("multiclass", "language-modelling"):
        o = out.reshape(-1, out.shape[-1])
        logp = torch.log(o.clamp_min(1e-12)) if probs(o, True) else F.log_softmax(o, -1)
        if soft:
            t = target.reshape(o.shape).to(o.dtype)
            t = t if probs(t, True) else F.softmax(t, -1)
            return -(t * logp).sum(-1).mean()
        return F.nll_loss(logp, target.reshape(-1).long())
    if name in ("binary", "multilabel"):
        o = out.reshape(len(out), -1)
        t = target.reshape(o.shape).to(o.dtype)
        if soft and not probs(t, False):
            t = torch.sigmoid(t)
        if probs(o, False):
            return F.binary_cross_entropy(o.clamp(_EPS, 1 - _EPS), t)
        return F.binary_cross_entropy_with_logits(o, t)
    if name == "regression":
        return F.mse_loss(out, target.reshape(out.shape).to(out.dtype))
    if name == "embeddings":
        return 1 - F.cosine_similarity(out.reshape(len(out), -1), target.reshape(len(out), -1).to(out.dtype)).mean()
    raise InvalidInput(f"unknown task {name!r}; one of {', '.join(TASKS)}")
