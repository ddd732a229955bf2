"""Step callbacks: code of yours that the loop calls after every optimizer step, on every rank.

Uses: send the loss to an experiment tracker (MLflow, Weights & Biases), log what the built-in
reporter does not, or end a run that went wrong by raising (the rank fails like any other error,
and `shipyard train` names the rank and the message).

From Python, pass callables: `fit(cfg, on_step=[my_callback])`. From a config, so that
`shipyard train` runs them on every rank, name a factory and its keyword arguments:

    on_step:
      - name: mypackage.tracking:loss_logger    # loss_logger(**options) -> callback
        options: {every: 10}

What an implementer must do: take one `StepInfo` and return None, quickly (the loop waits for it).
A callback runs on every rank; act on `info.rank == 0` alone for once-per-run work such as
logging. It is called after that step's checkpoint was written, so a run it ends can be resumed
from there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from shipyard.errors import InvalidInput
from shipyard.train.config import StepCallbackConfig
from shipyard.train.named import load_named


@dataclass(frozen=True)
class StepInfo:
    """Where the run is after one optimizer step."""

    step: int  # optimizer steps done, counting those before a resume
    total: int  # steps the run will take
    epoch: int  # 0-based
    rank: int
    world: int
    loss: torch.Tensor  # this rank's mean loss of the step, 0-d on the training device (float() waits for it)
    lr: float  # after this step's scheduler update: what the next step uses (as TensorBoard's train/lr)
    checkpoint: Path | None  # the checkpoint written at this step, if one was


StepCallback = Callable[[StepInfo], None]


def check_callbacks(configs: list[StepCallbackConfig]) -> None:
    """Import each named factory and check its options, without calling it (for the preflight)."""
    for i, c in enumerate(configs):
        factory = load_named(c.name, f"on_step[{i}].name")
        try:
            inspect.signature(factory).bind(**c.options)
        except TypeError as e:
            raise InvalidInput(f"on_step[{i}].options for {c.name!r}: {e}") from None


def build_callbacks(configs: list[StepCallbackConfig]) -> list[StepCallback]:
    """The callbacks a config names, each made by calling its factory with its options."""
    made: list[StepCallback] = []
    for i, c in enumerate(configs):
        factory = load_named(c.name, f"on_step[{i}].name")
        try:
            callback = factory(**c.options)
        except TypeError as e:  # an unknown option: name it
            raise InvalidInput(f"on_step[{i}].options for {c.name!r}: {e}") from None
        if not callable(callback):
            raise InvalidInput(f"on_step[{i}]: {c.name!r} returned {type(callback).__name__}, not a callable")
        made.append(callback)
    return made
