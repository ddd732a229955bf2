"""Progress of long operations (optimize, search), told to whoever shows it. The library draws
nothing: the command line renders these calls with rich; from Python, pass your own `Progress` or
none (quiet)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    """What a long operation reports. Implementers must accept any call order a `running` block
    makes: `start`, any number of `update`/`advance`, then `stop` (also when the work fails)."""

    def start(self, description: str, total: int | None = None) -> None:
        """Work begins: `total` steps when they can be counted, else None."""

    def update(self, description: str) -> None:
        """What the work is doing now."""

    def advance(self) -> None:
        """One of the `total` steps is done."""

    def stop(self) -> None:
        """The work ended."""


class Quiet:
    """The default: shows nothing."""

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def update(self, description: str) -> None:
        pass

    def advance(self) -> None:
        pass

    def stop(self) -> None:
        pass


QUIET = Quiet()


@contextmanager
def running(progress: Progress, description: str, total: int | None = None) -> Iterator[Progress]:
    progress.start(description, total)
    try:
        yield progress
    finally:
        progress.stop()
