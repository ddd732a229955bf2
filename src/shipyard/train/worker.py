"""The program each torchrun rank runs: `python -m shipyard.train.worker CONFIG [--repository DIR]
[--resume]`. It reports its fate to the launcher through small files in $SHIPYARD_TRAIN_ERRORS
(started / done / terminated / an error record), so a failed job can name the rank and its error."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

ERRORS_ENV = "SHIPYARD_TRAIN_ERRORS"


def _mark(rank: int, what: str, body: str = "") -> None:
    folder = os.environ.get(ERRORS_ENV)
    if folder:
        (Path(folder) / f"rank{rank}.{what}").write_text(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shipyard.train.worker")
    parser.add_argument("config")
    parser.add_argument("--repository", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    _mark(rank, "started")

    def on_term(signum: int, frame: FrameType | None) -> None:
        # torchrun stops the surviving ranks with SIGTERM once one failed: say so, then go.
        _mark(rank, "terminated", signal.Signals(signum).name)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        from shipyard.train.loop import fit

        fit(args.config, repository=args.repository, resume=args.resume)
    except BaseException as e:  # every failure is reported, then the rank exits non-zero
        from shipyard.errors import ShipyardError

        message = e.message if isinstance(e, ShipyardError) else f"{type(e).__name__}: {e}"
        _mark(rank, "error", json.dumps({"rank": rank, "time": time.time(), "message": message,
                                         "traceback": traceback.format_exc()}))
        print(f"rank {rank}: error: {message}", file=sys.stderr, flush=True)
        return 1
    _mark(rank, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
