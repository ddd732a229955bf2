"""The paged KV cache: one preallocated pool of fixed-size blocks per layer, handed out to sequences
by a free list. Sequences of any length share the pool without fragmenting it, and a finished
sequence's blocks are reused by the next one at once."""

from __future__ import annotations

import math

import torch


class BlockPool:
    """Keys and values of every layer in `[num_blocks * block_size, kv_heads, head_dim]` tensors
    (a token's slot is `block * block_size + offset`), and the free list of blocks."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, block_size: int, budget_bytes: int,
                 max_blocks: int, dtype: torch.dtype = torch.float32) -> None:
        per_block = 2 * layers * block_size * kv_heads * head_dim * torch.finfo(dtype).bits // 8
        self.num_blocks = max(1, min(budget_bytes // per_block, max_blocks))
        self.block_size = block_size
        self.bytes = self.num_blocks * per_block
        slots = self.num_blocks * block_size
        # torch.empty: the memory is reserved now and committed page by page as it fills.
        self.keys = [torch.empty(slots, kv_heads, head_dim, dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty(slots, kv_heads, head_dim, dtype=dtype) for _ in range(layers)]
        self._free = list(range(self.num_blocks - 1, -1, -1))

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def allocate(self, count: int) -> list[int] | None:
        """`count` blocks, or None (nothing taken) when fewer are free."""
        if count > len(self._free):
            return None
        return [self._free.pop() for _ in range(count)]

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))
        blocks.clear()
