"""Every conversion checks itself against its source on sample inputs (as Optimum's exporters do).

The tolerance of an output scales with it: `atol + rtol * max|source output|`. fp32 conversions
reorder sums (fused attention, layer norms), so logits of magnitude 10 drift ten times more than
logits of magnitude 1 while both exports are sound; a broken conversion is off by far more."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shipyard.errors import InvalidInput


class ParityError(InvalidInput):
    """A conversion whose outputs drift from its source beyond the stated tolerance."""


@dataclass
class Parity:
    """The output that came closest to (or over) its tolerance."""

    output: str
    max_abs_diff: float
    index: list[int]
    scale: float  # max |source output|
    tolerance: float

    def record(self, atol: float, rtol: float) -> dict[str, float | str]:
        return {"output": self.output, "max_abs_diff": self.max_abs_diff, "atol": atol, "rtol": rtol,
                "reference_max_abs": self.scale, "tolerance": self.tolerance}


def check_parity(step: str, source: dict[str, np.ndarray], result: dict[str, np.ndarray], atol: float,
                 rtol: float = 0.0) -> Parity:
    """Compare every output; raises naming the worst one (largest diff / tolerance) when any
    output differs from its source by more than `atol + rtol * max|source|`."""
    if atol < 0 or rtol < 0:
        raise InvalidInput(f"{step}: parity tolerances must be >= 0 (atol {atol}, rtol {rtol})")
    worst: Parity | None = None
    worst_ratio = -1.0
    for name, ref in source.items():
        if name not in result:
            raise ParityError(f"{step}: output '{name}' is missing from the converted model's outputs "
                              f"({sorted(result)}); the conversion changed the model's interface")
        got = result[name]
        if got.shape != ref.shape:
            raise ParityError(f"{step}: output '{name}' has shape {list(got.shape)}, its source gave "
                              f"{list(ref.shape)}; the conversion changed the model's interface")
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(got64 - ref64)
        if not np.isfinite(diff).all():
            raise ParityError(f"{step}: output '{name}' holds NaN/inf where its source does not")
        finite = np.abs(ref64[np.isfinite(ref64)])
        scale = float(finite.max()) if finite.size else 0.0
        tol = atol + rtol * scale
        top = float(diff.max()) if diff.size else 0.0
        ratio = top / tol if tol > 0 else (np.inf if top > 0 else 0.0)
        if ratio > worst_ratio:
            where = [int(i) for i in np.unravel_index(diff.argmax(), diff.shape)] if diff.size else []
            worst, worst_ratio = Parity(name, top, where, scale, tol), ratio
    if worst is None:
        return Parity("", 0.0, [], 0.0, atol)
    if worst.max_abs_diff > worst.tolerance:
        raise ParityError(
            f"{step} broke parity: output '{worst.output}' differs from its source by {worst.max_abs_diff:.3g} "
            f"at index {worst.index} (tolerance {worst.tolerance:.3g} = atol {atol:g} + rtol {rtol:g} x "
            f"max|source| {worst.scale:.3g}); nothing was published. Raise the pass's 'atol'/'rtol' if the "
            "drift is acceptable, or try another opset / format")
    return worst
