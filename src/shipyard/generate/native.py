"""shipyard's own CPU kernels for the engine, in C, compiled once per machine and loaded with ctypes.

A kernel is built on first use with the system C compiler for the CPU it runs on (`-march=native`)
into a cache folder keyed by the source, the compiler and the CPU, so later processes load it at
once. Where there is no compiler, or the build fails, `load()` says why and the engine keeps its
torch path: the kernels are a speed-up, never a requirement.

The library is linked against `libgomp.so.1` and loaded after torch, so its OpenMP calls go to the
libgomp torch brought (same soname): one thread pool, one wait policy.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger("shipyard.generate")
SOURCE = Path(__file__).with_name("csrc") / "paged_attention.c"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]
ABI_VERSION = 1
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


class NativeUnavailable(RuntimeError):
    """The kernels could not be built or loaded here; the message says why."""


def cache_dir() -> Path:
    base = os.environ.get("SHIPYARD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shipyard")
    return Path(base) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()
                         + _cpu_flags().encode()).hexdigest()[:16]
    target = cache_dir() / f"paged_attention-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise NativeUnavailable(f"{compiler} failed to build {SOURCE.name}: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: processes building at once each publish a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("built %s", target)
    return target


@cache
def load() -> ctypes.CDLL:
    """The kernel library, built if needed; raises `NativeUnavailable` with the reason."""
    if platform.system() != "Linux":
        raise NativeUnavailable(f"native kernels are built for Linux only (this is {platform.system()})")
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise NativeUnavailable("no C compiler (gcc or cc) on PATH to build the native kernels")
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"native kernels could not be built or loaded: {e}") from None
    if lib.shipyard_abi_version() != ABI_VERSION:
        raise NativeUnavailable("a stale native kernel library was loaded; clear " + str(cache_dir()))
    lib.shipyard_decode_attention.restype = None
    lib.shipyard_decode_attention.argtypes = [_ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64,
                                              _i64, _i64, _i64, _i64, ctypes.c_float, ctypes.c_int]
    return lib


def available() -> str | None:
    """None if the kernels load here, else why not."""
    try:
        load()
    except NativeUnavailable as e:
        return str(e)
    return None


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, table: torch.Tensor,
                     block_size: int, lengths: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """Attention of one query per sequence over its paged keys and values, written into `out`.

    q [B, H, D] fp32 (rows may be strided, heads and dims contiguous); keys, values [slots, Hkv, D]
    contiguous fp32; table [B, W] int64 block ids; lengths [B] int64 (tokens attended, the new one
    included, each <= W * block_size); out [B, H, D] contiguous fp32."""
    batch, heads, dim = q.shape
    kv_heads = keys.shape[1]
    if not (q.dtype == keys.dtype == values.dtype == out.dtype == torch.float32):
        raise TypeError("decode_attention is fp32 only")
    if q.stride(2) != 1 or q.stride(1) != dim or not (keys.is_contiguous() and values.is_contiguous()
                                                        and out.is_contiguous()):
        raise ValueError("decode_attention needs contiguous heads and pools")
    if heads % kv_heads or table.dtype != torch.int64 or lengths.dtype != torch.int64:
        raise ValueError("decode_attention: heads must be a multiple of kv_heads; table and lengths int64")
    table, lengths = table.contiguous(), lengths.contiguous()
    longest = int(lengths.max()) if batch else 0
    if longest > table.shape[1] * block_size:
        raise ValueError("decode_attention: a length reaches past its block table")
    scores = torch.empty(batch * heads * max(longest, 1))
    load().shipyard_decode_attention(q.data_ptr(), q.stride(0), keys.data_ptr(), values.data_ptr(),
                                     table.data_ptr(), table.shape[1], block_size, lengths.data_ptr(),
                                     out.data_ptr(), scores.data_ptr(), max(longest, 1), batch, heads, kv_heads,
                                     dim, scale, torch.get_num_threads())
