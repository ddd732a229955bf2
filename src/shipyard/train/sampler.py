"""Which samples each rank sees, in which order, resumable at any micro-batch.

Every rank draws the same seeded permutation for an epoch and takes every `world`-th index
(as torch's DistributedSampler does), so rank r's k-th micro-batch of size b and the other ranks'
k-th micro-batches together are exactly one process's k-th batch of size world*b. The position
(epoch, micro-batch) is all a checkpoint needs to continue where a run stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate


class ShardedBatches:
    def __init__(self, dataset: Dataset[Any], batch_size: int, rank: int, world: int, seed: int,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world = world
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            from shipyard.errors import InvalidInput

            raise InvalidInput("the training data is empty")
        # Pad by repeating the start so every rank has the same number of samples (the
        # collectives need equal step counts on every rank).
        self.per_rank = math.ceil(self.size / world)
        full, rest = divmod(self.per_rank, batch_size)
        self.batches_per_epoch = full if drop_last or rest == 0 else full + 1
        if self.batches_per_epoch == 0:
            from shipyard.errors import InvalidInput

            raise InvalidInput(
                f"data.batch_size {batch_size} is larger than each rank's share of the data "
                f"({self.per_rank} samples) and drop_last is on: no batch would run"
            )

    def indices(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        pad = self.per_rank * self.world - self.size
        if pad:
            order = torch.cat([order, order[:pad]])
        return order[self.rank :: self.world]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, ...]]:
        """Micro-batches of `epoch`, skipping the first `start` (already trained on)."""
        mine = self.indices(epoch)
        for k in range(start, self.batches_per_epoch):
            yield self.fetch(mine[k * self.batch_size : (k + 1) * self.batch_size])

    def fetch(self, idx: torch.Tensor) -> tuple[Any, ...]:
        if isinstance(self.dataset, TensorDataset):  # one gather per tensor, no per-sample collate
            return tuple(t[idx] for t in self.dataset.tensors)
        return tuple(default_collate([self.dataset[int(i)] for i in idx]))
