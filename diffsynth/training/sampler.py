"""Data order: a fresh shuffle per epoch from ``seed + epoch``, batches of one shape bucket, sharded across
processes, resumable mid-epoch.

DiffSynth shuffles with torch's global RNG, which makes runs unrepeatable and resume impossible. Deriving
each epoch's permutation from the seed and the epoch number means a resumed run sees exactly the items
the interrupted one would have seen.

Batches (``BucketBatchSampler``): the epoch's permutation is split by bucket key (keeping the permuted
order inside each bucket), each bucket is cut into batches of ``batch_size``, and the batches are ordered by
where their first row falls in the permutation. A bucket's remainder is one smaller last batch: every row is
used exactly once per epoch and nothing is carried over. Batch ``k`` goes to process ``k % world_size``;
since DDP needs every process to take the same number of steps, the batch list is padded by wrapping to a
multiple of ``world_size`` (at most ``world_size - 1`` batches repeat, as torch's DistributedSampler does
with items). With ``batch_size`` 1 this is exactly :class:`EpochShuffleSampler`'s order.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.data import Sampler


def epoch_permutation(num_items: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.num_items = num_items
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.start = start
        # every rank gets the same number of items (DDP needs equal steps): pad by wrapping, as DistributedSampler
        self.per_rank = math.ceil(num_items / world_size)

    def indices(self) -> list[int]:
        order = epoch_permutation(self.num_items, self.seed, self.epoch)
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class BucketBatchSampler(Sampler[list[int]]):
    """Lists of dataset indices, each from one bucket; ``keys[i]`` is item ``i``'s bucket key.

    ``start`` is the number of this process's batches already done in this epoch (the resume position)."""

    def __init__(self, keys: Sequence, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.keys = list(keys)
        self.batch_size = batch_size
        self.seed, self.epoch, self.rank, self.world_size, self.start = seed, epoch, rank, world_size, start
        self._all = self._padded_batches()
        self.per_rank = len(self._all) // world_size

    def _padded_batches(self) -> list[list[int]]:
        order = epoch_permutation(len(self.keys), self.seed, self.epoch)
        buckets: dict = {}
        for position, index in enumerate(order):
            buckets.setdefault(self.keys[index], []).append((position, index))
        batches = [members[i:i + self.batch_size] for members in buckets.values()
                   for i in range(0, len(members), self.batch_size)]
        batches.sort(key=lambda batch: batch[0][0])  # by where the batch's first row falls in the permutation
        batches = [[index for _, index in batch] for batch in batches]
        total = math.ceil(len(batches) / self.world_size) * self.world_size
        return batches + batches[: total - len(batches)]

    def batches(self) -> list[list[int]]:
        """This process's batches of the whole epoch (``start`` not applied)."""
        return self._all[self.rank::self.world_size]

    def samples_in_step(self, position: int) -> int:
        """Samples all processes together take at this process's ``position``-th batch (0-based), exactly."""
        row = self._all[position * self.world_size:(position + 1) * self.world_size]
        return sum(len(batch) for batch in row)

    def __iter__(self):
        return iter(self.batches()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
