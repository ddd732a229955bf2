"""The pass interface. A pass is a config (a pydantic model: plain data, so a recipe file can name
it and a manifest can record it) plus a handler registered by the config's type:

    @register(Clip)
    def clip(artifact: Artifact, config: Clip, ctx: Context) -> Artifact: ...

Implementers must: never modify the input artifact's files (write new ones under `ctx.workdir`);
raise `shipyard.errors.InvalidInput` naming the pass, the layer and the fix for anything they cannot
handle; add a sentence to `ctx.notes` for every choice a reader of the report should know about
(which kernel, which int8 format and why). Set `lossless = True` on conversions: the runner then
checks the result against its source within `parity_atol + parity_rtol * max|output|` (fields
`atol`/`rtol` on the config override them) and stops when it drifts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from shipyard.optimize.artifact import Artifact
from shipyard.optimize.data import Dataset
from shipyard.repository import Signature
from shipyard.tensors import numpy_dtype


class PassConfig(BaseModel):
    """Base of every pass config. `name` is what a recipe file writes as `pass:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str]
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

    def path(self, stem: str, suffix: str) -> Path:
        self.counter += 1
        return self.workdir / f"{self.counter:02d}-{stem}{suffix}"

    def sample(self, signature: Signature, n: int = 8) -> dict[str, np.ndarray]:
        """`n` real samples (eval, else calibration data) or, with no data, synthetic ones."""
        for data in (self.eval_data, self.calibration, self.train):
            if data is not None:
                return data.take(n)
        rng = np.random.default_rng(self.seed)
        out: dict[str, np.ndarray] = {}
        for t in signature.inputs:
            shape = [n if i == 0 else (8 if d == -1 else d) for i, d in enumerate(t.shape)]
            dtype = numpy_dtype(t.datatype)
            out[t.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                           else rng.integers(0, 100, shape).astype(dtype))
        if "attention_mask" in out:
            out["attention_mask"][:] = 1
        return out

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


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


def apply(artifact: Artifact, config: PassConfig, ctx: Context) -> Artifact:
    """Run one pass (torchao's `quantize_(model, config)` shape: the config's type picks the handler)."""
    return REGISTRY[type(config)](artifact, config, ctx)
