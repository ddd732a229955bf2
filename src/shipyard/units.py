"""Quantities written for people: file sizes in B/KB/MB/GB. Library code (reports) and the
command line both print them, so they live below both."""

from __future__ import annotations


def human_size(n: float) -> str:
    """`n` bytes in the largest binary unit that keeps the figure under 1024 ('1.5 MB')."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
