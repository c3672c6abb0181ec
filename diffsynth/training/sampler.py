"""Data order: a fresh shuffle per epoch from ``seed + epoch``, sharded across processes, resumable mid-epoch.

DiffSynth shuffles with torch's global RNG, which makes runs unrepeatable and resume impossible. Deriving
each epoch's permutation from the seed and the epoch number means a resumed run sees exactly the items
the interrupted one would have seen.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


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
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
