"""shipyard's own CPU kernels, in C, compiled once per machine and loaded with ctypes (for now, the
generation engine's decode attention over the paged KV cache).

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

log = logging.getLogger("shipyard.kernels")
SOURCE = Path(__file__).with_name("csrc") / "shipyard_kernels.c"
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
    target = cache_dir() / f"shipyard_kernels-{key}.so"
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
    lib.shipyard_write_kv.restype = None
    lib.shipyard_write_kv.argtypes = [_ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr, _i64]
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


class DecodePlan:
    """One step's decode attention, set up once and run at every layer: the block table, lengths
    and scratch scores are the same for all layers, only the query, pools and output change."""

    def __init__(self, table: torch.Tensor, lengths: torch.Tensor, block_size: int, heads: int, kv_heads: int,
                 dim: int, scale: float) -> None:
        if heads % kv_heads or table.dtype != torch.int64 or lengths.dtype != torch.int64:
            raise ValueError("decode_attention: heads must be a multiple of kv_heads; table and lengths int64")
        self.table, self.lengths = table.contiguous(), lengths.contiguous()
        self.batch = int(self.lengths.shape[0])
        self.longest = max(int(self.lengths.max()), 1) if self.batch else 1
        if self.longest > self.table.shape[1] * block_size:
            raise ValueError("decode_attention: a length reaches past its block table")
        self.heads, self.kv_heads, self.dim = heads, kv_heads, dim
        # The last slot any row reads, checked against each pool so that no read lands outside it.
        self.reach = (int(self.table.max()) + 1) * block_size if self.table.numel() else 0
        if self.table.numel() and int(self.table.min()) < 0:
            raise ValueError("decode_attention: a block id in the table is negative")
        self.scores = torch.empty(self.batch * heads * self.longest)
        self._fixed = (self.table.data_ptr(), self.table.shape[1], block_size, self.lengths.data_ptr())
        self._call = load().shipyard_decode_attention
        self._write = load().shipyard_write_kv
        self._slots_checked: torch.Tensor | None = None
        self.scale = scale

    def write_and_run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor,
                      keys: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> None:
        """The engine's hot path, once per layer: write the step's new keys and values k, v [T, Hkv, D]
        (every row, prefill ones included) to their cache `slots` [T] (int64, contiguous), then attend
        for the plan's decoders, the first rows of q and out."""
        q, out = q[: self.batch], out[: self.batch]
        self._check(q, keys, values, out)
        if not (k.dtype == v.dtype == torch.float32 and k.stride(2) == v.stride(2) == 1
                and k.stride(1) == v.stride(1) == self.dim and slots.dtype == torch.int64 and slots.is_contiguous()
                and k.shape[0] == v.shape[0] == slots.shape[0]):
            raise ValueError("decode_attention: new keys and values need fp32, contiguous heads, one int64 slot per row")
        if slots is not self._slots_checked:  # every layer of a step writes to the same slots: check once
            if slots.numel() and not 0 <= int(slots.min()) <= int(slots.max()) < keys.shape[0]:
                raise ValueError(f"decode_attention: a write slot lies outside the cache's {keys.shape[0]} slots")
            self._slots_checked = slots
        self._write(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), slots.data_ptr(), k.shape[0],
                    keys.data_ptr(), values.data_ptr(), self.kv_heads * self.dim)
        self._attend(q, keys, values, out)

    def run(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> None:
        """q [B, H, D] fp32 (rows may be strided, heads and dims contiguous); keys, values
        [slots, Hkv, D] contiguous fp32; out [B, H, D] contiguous fp32."""
        self._check(q, keys, values, out)
        self._attend(q, keys, values, out)

    def _check(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> None:
        if not (q.dtype == keys.dtype == values.dtype == out.dtype == torch.float32):
            raise TypeError("decode_attention is fp32 only")
        if (q.shape != (self.batch, self.heads, self.dim) or keys.shape[1:] != (self.kv_heads, self.dim)
                or values.shape != keys.shape or q.stride(2) != 1 or q.stride(1) != self.dim or out.shape != q.shape
                or not (keys.is_contiguous() and values.is_contiguous() and out.is_contiguous())):
            raise ValueError("decode_attention: shapes differ from the plan's, or heads and pools are not contiguous")
        if self.reach > keys.shape[0]:
            raise ValueError(f"decode_attention: the block table reaches past the cache's {keys.shape[0]} slots")

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> None:
        self._call(q.data_ptr(), q.stride(0), keys.data_ptr(), values.data_ptr(), *self._fixed, out.data_ptr(),
                   self.scores.data_ptr(), self.longest, self.batch, self.heads, self.kv_heads, self.dim,
                   self.scale, torch.get_num_threads())

def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, table: torch.Tensor,
                     block_size: int, lengths: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """Attention of one query per sequence over its paged keys and values, written into `out`:
    table [B, W] int64 block ids, lengths [B] int64 (tokens attended, the new one included, each
    <= W * block_size); the rest as in `DecodePlan.run`."""
    DecodePlan(table, lengths, block_size, q.shape[1], keys.shape[1], q.shape[2], scale).run(q, keys, values, out)

