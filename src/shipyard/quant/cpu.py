"""The CPU features that decide which int8 kernels are fast, read once from the kernel's view."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> dict[str, Any]:
    """AVX2, AVX-512, VNNI (either encoding), AMX, the CPU model and the cores we may use."""
    flags = cpu_flags()
    model = ""
    try:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "model": model,
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_tile" in flags and "amx_int8" in flags,
        "fp16_math": "avx512_fp16" in flags,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def has_vnni() -> bool:
    return bool(cpu_features()["vnni"])


def describe(features: dict[str, Any]) -> str:
    on = [k.upper().replace("AVX512", "AVX-512") for k in ("avx2", "avx512", "vnni", "amx") if features.get(k)]
    return f"{features.get('model') or 'unknown CPU'}; {', '.join(on) or 'no AVX2'}; {features.get('cores')} cores"
