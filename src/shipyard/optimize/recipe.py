"""Recipes: an ordered list of pass configs, written as plain data (YAML or a list of dicts):

    passes:
      - pass: export
        format: onnx
      - pass: quantize
        mode: static
        calibration: entropy

Presets are recipes shipped with shipyard; those whose first pass works only on ONNX (its
`accepts`) start with an export when the source is a PyTorch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shipyard.errors import InvalidInput
from shipyard.optimize.passes import BY_NAME, PassConfig, kinds

Recipe = list[PassConfig]

# name -> (description, steps). Steps needing ONNX get an export prepended for PyTorch sources.
PRESETS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "int8-dynamic": ("ONNX Runtime dynamic int8 (MatMul/Gemm weights; activations quantized at run time)",
                     [{"pass": "quantize", "mode": "dynamic"}]),
    "int8-static": ("ONNX Runtime static int8 QDQ, per-channel weights, MinMax calibration",
                    [{"pass": "quantize", "mode": "static", "calibration": "minmax"}]),
    "fp16": ("fp16 weights and math (a size option on CPUs)", [{"pass": "quantize", "mode": "fp16"}]),
    "prune-structured-50": ("remove half the channels / heads / FFN neurons; fine-tune when --train is given; "
                            "then export to ONNX, which serves a small model several times faster than torch",
                            [{"pass": "prune-structured", "amount": 0.5}, {"pass": "export", "format": "onnx"}]),
    "lowrank-90": ("truncated SVD of Linear layers keeping 90% of the spectral energy, where it saves FLOPs",
                   [{"pass": "low-rank", "energy": 0.9}]),
    "distill-half": ("distill a half-width student (at most half the channels of every conv/linear layer, or heads "
                     "and FFN neurons, narrowed further until it has at most a quarter of the teacher's "
                     "parameters) from the model on --train data, then export it to ONNX",
                     [{"pass": "distill", "student": "narrow", "width": 0.5, "parameter_ratio": 0.25,
                       "epochs": 15, "lr": 5e-3},
                      {"pass": "export", "format": "onnx"}]),
    "int8-weight-only": ("int8 per-channel weights for Linear layers, fp32 activations (causal LMs, PyTorch models)",
                         [{"pass": "weight-only", "bits": 8}]),
    "int4-weight-only": ("int4 group-wise (128) weights for Linear layers, fp32 activations",
                         [{"pass": "weight-only", "bits": 4, "group_size": 128}]),
}


def runs_on(pass_name: str, kind: str) -> bool:
    """Whether the pass works on artifacts of this kind ('torch', 'onnx'), as it declares."""
    cls = BY_NAME.get(pass_name)
    return cls is not None and kind in kinds(cls)


def passes_for(fmt: str) -> list[str]:
    """The passes that name the format `fmt` among those they accept (not those that take any)."""
    return [name for name, cls in BY_NAME.items() if cls.accepts is not None and fmt in cls.accepts]


def presets_for(fmt: str) -> list[str]:
    """The presets whose every pass accepts versions of the format `fmt`."""
    allowed = set(passes_for(fmt))
    return [name for name, (_, steps) in PRESETS.items() if all(s["pass"] in allowed for s in steps)]


def parse_step(step: Any, index: int) -> PassConfig:
    if isinstance(step, PassConfig):
        return step
    if not isinstance(step, dict) or "pass" not in step:
        raise InvalidInput(f"recipe step {index} is {step!r}; each step is a mapping with a 'pass' key, "
                           f"e.g. {{pass: quantize, mode: static}}")
    fields = {k: v for k, v in step.items() if k != "pass"}
    name = str(step["pass"])
    cls = BY_NAME.get(name)
    if cls is None:
        raise InvalidInput(f"recipe step {index}: unknown pass '{name}'; known passes: {', '.join(sorted(BY_NAME))}")
    try:
        return cls(**fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
        raise InvalidInput(f"recipe step {index} (pass '{name}'): {problems}") from None


def parse_recipe(data: Any) -> Recipe:
    """A recipe from YAML text's parsed form: a list of steps, or a mapping with `passes:`."""
    if isinstance(data, dict):
        unknown = set(data) - {"passes", "description", "task"}
        if unknown:
            raise InvalidInput(f"recipe has unknown keys {sorted(unknown)}; use 'passes' (and 'description', 'task')")
        data = data.get("passes")
    if not isinstance(data, list) or not data:
        raise InvalidInput("a recipe is a non-empty list of passes (or a mapping with 'passes:')")
    return [parse_step(s, i) for i, s in enumerate(data, start=1)]


def recipe_task(recipe: Any) -> str | None:
    """The `task:` a recipe mapping (or file) names, checked; None when it names none."""
    from shipyard import tasks
    from shipyard.config import read_yaml

    if isinstance(recipe, (str, Path)):
        recipe = read_yaml(recipe, "recipe file")
    return tasks.check_name(recipe.get("task")) if isinstance(recipe, dict) else None


def load_recipe(path: str | Path) -> Recipe:
    from shipyard.config import read_yaml

    return parse_recipe(read_yaml(path, "recipe file"))


def preset(name: str, source_kind: str, has_train: bool = False) -> Recipe:
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    steps = [dict(s) for s in PRESETS[name][1]]
    if name == "prune-structured-50" and has_train:
        # Cosine decay from 3e-3 over 10 epochs: measured on digits, it recovers the pruned CNN to
        # within a few tenths of a point of its parent (1e-3 left it 0.8 points behind).
        steps[0].update(fine_tune_epochs=10, lr=3e-3)
    if source_kind == "torch" and not runs_on(steps[0]["pass"], "torch"):
        steps.insert(0, {"pass": "export", "format": "onnx"})
    return parse_recipe(steps)
