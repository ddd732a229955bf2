"""shipyard's C decode-attention kernel and GPT-2's fused GELU, against torch's own ops: same
numbers on real pools and block tables, greedy output unchanged, and a clear fallback where the
kernel cannot be built."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shipyard.errors import InvalidInput
from shipyard.generate import AsyncEngine, SamplingParams
from shipyard.generate.families.gpt2 import fuse_gelu_
from shipyard.generate.lean import PackedLinear, pack_linears_
from shipyard.kernels import native
from tests.generate.test_engine import PROMPTS, collect, open_engine, reference

needs_native = pytest.mark.skipif(native.available() is not None, reason=f"native kernel: {native.available()}")


def torch_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, table: torch.Tensor,
                           block_size: int, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    span = torch.arange(int(lengths.max()))
    pos = torch.minimum(span[None], lengths[:, None] - 1)
    slots = table.gather(1, pos // block_size) * block_size + pos % block_size
    k, v = keys[slots].transpose(1, 2), values[slots].transpose(1, 2)
    mask = (span[None] < lengths[:, None])[:, None, None, :]
    gqa = q.shape[1] != keys.shape[1]
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=gqa).squeeze(2)


@needs_native
@pytest.mark.parametrize(("heads", "kv_heads", "dim", "block_size"), [(12, 12, 64, 16), (8, 2, 32, 4), (4, 1, 80, 1)])
def test_decode_attention_equals_sdpa_over_gathered_keys(heads: int, kv_heads: int, dim: int, block_size: int) -> None:
    gen = torch.Generator().manual_seed(heads)
    lengths = torch.tensor([1, 3, block_size * 7 + 1, block_size * 12, 17])
    batch, width = len(lengths), -(-int(lengths.max()) // block_size)
    blocks = batch * width + 3
    keys = torch.randn(blocks * block_size, kv_heads, dim, generator=gen)
    values = torch.randn(blocks * block_size, kv_heads, dim, generator=gen)
    table = torch.randperm(blocks, generator=gen)[: batch * width].view(batch, width)  # scattered blocks
    # Query rows strided as in a fused QKV projection: heads and dims contiguous, rows 3x apart.
    q = torch.randn(batch, 3 * heads * dim, generator=gen)[:, : heads * dim].view(batch, heads, dim)
    out = torch.full((batch, heads, dim), float("nan"))
    native.decode_attention(q, keys, values, table, block_size, lengths, dim ** -0.5, out)
    expected = torch_decode_attention(q, keys, values, table, block_size, lengths, dim ** -0.5)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@needs_native
def test_one_call_writes_the_steps_keys_and_values_then_attends() -> None:
    gen = torch.Generator().manual_seed(7)
    heads, kv_heads, dim, block_size = 4, 2, 16, 4
    keys = torch.randn(64, kv_heads, dim, generator=gen)
    values = torch.randn(64, kv_heads, dim, generator=gen)
    lengths = torch.tensor([5, 9])  # two decoders; their new tokens sit at positions 4 and 8
    table = torch.tensor([[3, 7, 0], [1, 2, 5]])
    slots = torch.tensor([7 * block_size + 0, 5 * block_size + 0, 40, 41])  # two decoders, then two prefill rows
    # A fused projection's output: q, k, v side by side in each row, as GPT-2's c_attn gives them.
    qkv = torch.randn(4, (heads + 2 * kv_heads) * dim, generator=gen)
    q = qkv[:, : heads * dim].view(4, heads, dim)
    k = qkv[:, heads * dim:(heads + kv_heads) * dim].view(4, kv_heads, dim)
    v = qkv[:, (heads + kv_heads) * dim:].view(4, kv_heads, dim)
    expected_keys, expected_values = keys.clone().index_copy_(0, slots, k), values.clone().index_copy_(0, slots, v)
    expected = torch_decode_attention(q[:2], expected_keys, expected_values, table, block_size, lengths, 0.25)
    out = torch.zeros(4, heads, dim)
    native.DecodePlan(table, lengths, block_size, heads, kv_heads, dim, 0.25).write_and_run(q, k, v, slots, keys,
                                                                                              values, out)
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    torch.testing.assert_close(out[:2], expected, atol=2e-5, rtol=1e-4)
    assert not out[2:].any()  # prefill rows are attended elsewhere


@needs_native
def test_decode_attention_refuses_what_it_cannot_read() -> None:
    keys = values = torch.zeros(32, 2, 8)
    table = torch.zeros(1, 2, dtype=torch.long)
    q, out = torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)
    with pytest.raises(TypeError, match="fp32 only"):
        native.decode_attention(q.double(), keys, values, table, 4, torch.tensor([3]), 1.0, out)
    with pytest.raises(ValueError, match="past its block table"):
        native.decode_attention(q, keys, values, table, 4, torch.tensor([9]), 1.0, out)
    with pytest.raises(ValueError, match="reaches past the cache's 32 slots"):
        native.decode_attention(q, keys, values, torch.tensor([[0, 8]]), 4, torch.tensor([6]), 1.0, out)
    plan = native.DecodePlan(table, torch.tensor([3]), 4, 2, 2, 8, 1.0)
    with pytest.raises(ValueError, match="write slot lies outside"):
        plan.write_and_run(q, q, q, torch.tensor([32]), keys.clone(), values.clone(), out)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        native.decode_attention(torch.zeros(1, 3, 8), torch.zeros(32, 2, 8), values, table, 4, torch.tensor([3]),
                                1.0, torch.zeros(1, 3, 8))


@needs_native
def test_the_kernels_use_the_openmp_runtime_torch_loaded() -> None:
    # In a fresh process: loading and running the kernels maps no libgomp beyond torch's own (other
    # packages, scikit-learn for one, may bring theirs; that is not the kernels' doing).
    import subprocess
    import sys

    code = """
import torch
from shipyard.kernels import native
def gomp():
    return {l.split()[-1] for l in open("/proc/self/maps") if "libgomp" in l}
before = gomp()
native.load()
q = torch.zeros(1, 2, 8); keys = torch.zeros(8, 2, 8)
native.decode_attention(q, keys, keys, torch.zeros(1, 2, dtype=torch.long), 4, torch.tensor([3]), 1.0, torch.zeros(1, 2, 8))
print(len(before), gomp() == before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "True"], done.stdout + done.stderr


def test_a_kernel_that_cannot_be_built_falls_back_with_the_reason(lm_folders: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    native.load.cache_clear()
    try:
        assert "failed to build" in (native.available() or "")
        _, eng = open_engine(lm_folders["gpt2"], tmp_path / "auto", attention_kernel="auto")
        assert not eng.lm.native_attention and "failed to build" in eng.lm.attention_note
        eng.close()
        with pytest.raises(InvalidInput, match="'native' is not available: .*failed to build"):
            open_engine(lm_folders["gpt2"], tmp_path / "native", attention_kernel="native")
    finally:
        monkeypatch.undo()
        native.load.cache_clear()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kernel", ["torch", pytest.param("native", marks=needs_native)])
def test_greedy_output_equals_transformers_with_either_attention(lm_folders: dict[str, Path], tmp_path: Path,
                                                                 family: str, kernel: str) -> None:
    runtime, eng = open_engine(lm_folders[family], tmp_path, attention_kernel=kernel)
    assert eng.lm.native_attention == (kernel == "native")
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)

    async def together() -> list[dict[int, list[int]]]:  # one batch: decoders of different lengths
        return await asyncio.gather(*[collect(AsyncEngine(eng), p, params) for p in PROMPTS])

    try:
        for prompt, got in zip(PROMPTS, asyncio.run(together()), strict=True):
            assert got[0] == reference(runtime, prompt, 20), prompt
        assert eng.stats.most_in_a_step == len(PROMPTS)  # they did share steps
    finally:
        eng.close()


def test_gpt2_gelu_fused_into_the_packed_matmul_or_computed_in_one_op(lm_folders: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(lm_folders["gpt2"])).eval()
    x = torch.randn(7, model.config.n_embd)
    mlp = model.transformer.h[0].mlp
    with torch.inference_mode():
        expected = mlp(x)
        assert fuse_gelu_(mlp) == "one op" and isinstance(mlp.act, torch.nn.GELU)
        torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
        assert pack_linears_(mlp) == 2 and isinstance(mlp.c_fc, PackedLinear)
        assert fuse_gelu_(mlp) == "fused" and isinstance(mlp.act, torch.nn.Identity)
        assert mlp.c_fc.activation == ("gelu", "tanh")
        torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
