"""Every conversion checks itself against its source on sample inputs (as Optimum's exporters do)."""

from __future__ import annotations

import numpy as np

from shipyard.errors import InvalidInput


class ParityError(InvalidInput):
    """A conversion whose outputs drift from its source beyond the stated tolerance."""


def check_parity(step: str, source: dict[str, np.ndarray], result: dict[str, np.ndarray], atol: float) -> float:
    """Largest |difference| over all outputs; raises naming the worst output when above `atol`."""
    worst_name, worst, where = "", 0.0, ()
    for name, ref in source.items():
        got = result[name]
        if got.shape != ref.shape:
            raise ParityError(f"{step}: output '{name}' has shape {list(got.shape)}, its source gave "
                              f"{list(ref.shape)}; the conversion changed the model's interface")
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        if not np.isfinite(diff).all():
            raise ParityError(f"{step}: output '{name}' holds NaN/inf where its source does not")
        if diff.size and diff.max() > worst:
            worst_name, worst = name, float(diff.max())
            where = tuple(int(i) for i in np.unravel_index(diff.argmax(), diff.shape))
    if worst > atol:
        raise ParityError(
            f"{step} broke parity: output '{worst_name}' differs from its source by {worst:.3g} at index "
            f"{list(where)} (tolerance {atol:g}); nothing was published. Raise the pass's 'atol' if the "
            "drift is acceptable, or try another opset / format")
    return worst
