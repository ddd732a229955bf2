"""The pass interface. A pass is a config (a pydantic model: plain data, so a recipe file can name
it and a manifest can record it) plus a handler registered by the config's type:

    @register(Clip)
    def clip(artifact: Artifact, config: Clip, ctx: Context) -> Artifact: ...

Implementers must: never modify the input artifact's files (write new ones under `ctx.workdir`);
raise `shipyard.errors.InvalidInput` naming the pass, the layer and the fix for anything they cannot
handle; add a sentence to `ctx.notes` for every choice a reader of the report should know about
(which kernel, which int8 format and why). Declare in `accepts` the formats
(`shipyard.optimize.formats`) whose models the pass can change: the runner refuses the rest before
calling the handler, and presets and the search read it. Set `lossless = True` on conversions: the
runner then checks the result against its source within `parity_atol + parity_rtol * max|output|`
(fields `atol`/`rtol` on the config override them) and stops when it drifts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from shipyard.optimize.artifact import Artifact
from shipyard.optimize.data import Dataset, synthetic
from shipyard.repository import Signature


class PassConfig(BaseModel):
    """Base of every pass config. `name` is what a recipe file writes as `pass:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]
    # The formats of the models this pass works on (None: any); see `shipyard.optimize.formats`.
    accepts: ClassVar[frozenset[str] | None] = None
    lossless: ClassVar[bool] = False
    parity_atol: ClassVar[float] = 1e-4
    parity_rtol: ClassVar[float] = 0.0

    def record(self) -> dict[str, Any]:
        """The config as the manifest stores it: `{"pass": name, **fields}`."""
        return {"pass": self.name, **self.model_dump(mode="json")}


@dataclass
class Context:
    """What a pass may use besides its input: data, a scratch folder, and where to write notes."""

    workdir: Path
    threads: int = 1
    eval_data: Dataset | None = None
    calibration: Dataset | None = None
    train: Dataset | None = None
    notes: list[str] = field(default_factory=list)
    # Facts a pass measured (kernel timings, channels removed) for report.json.
    facts: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    counter: int = 0
    task: str | None = None  # what the outputs mean (shipyard.tasks): the loss distill and fine-tuning use

    def path(self, stem: str, suffix: str) -> Path:
        self.counter += 1
        return self.workdir / f"{self.counter:02d}-{stem}{suffix}"

    def sample(self, signature: Signature, n: int = 8) -> dict[str, np.ndarray]:
        """`n` real samples (eval, else calibration data) or, with no data, synthetic ones."""
        for data in (self.eval_data, self.calibration, self.train):
            if data is not None:
                return data.take(n)
        out = synthetic(signature, n, self.seed)
        if "attention_mask" in out:
            out["attention_mask"][:] = 1
        return out

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# The PyTorch formats a pass can change before an export (hf-causal-lm versions keep their format).
TORCH = frozenset({"torch-export", "hf-transformers"})

Handler = Callable[[Artifact, Any, Context], Artifact]
C = TypeVar("C", bound=PassConfig)

# config type -> handler; and the recipe name -> config type.
REGISTRY: dict[type[PassConfig], Handler] = {}
BY_NAME: dict[str, type[PassConfig]] = {}


def register(config_type: type[C]) -> Callable[[Callable[[Artifact, C, Context], Artifact]], Callable[[Artifact, C, Context], Artifact]]:
    def deco(fn: Callable[[Artifact, C, Context], Artifact]) -> Callable[[Artifact, C, Context], Artifact]:
        REGISTRY[config_type] = fn
        BY_NAME[config_type.name] = config_type
        return fn
    return deco


def kinds(config_type: type[PassConfig]) -> set[str]:
    """The artifact kinds ('torch', 'onnx') of the formats a pass accepts."""
    from shipyard.optimize.formats import REGISTRY as FORMATS

    if config_type.accepts is None:
        return {f.kind for f in FORMATS.values()}
    return {FORMATS[f].kind for f in config_type.accepts if f in FORMATS}


def accepts(config_type: type[PassConfig], fmt: str) -> bool:
    return config_type.accepts is None or fmt in config_type.accepts


def apply(artifact: Artifact, config: PassConfig, ctx: Context) -> Artifact:
    """Run one pass (torchao's `quantize_(model, config)` shape: the config's type picks the handler)."""
    allowed = kinds(type(config))
    if artifact.kind not in allowed and len(allowed) == 1:
        artifact.require(allowed.pop(), config.name)
    return REGISTRY[type(config)](artifact, config, ctx)
