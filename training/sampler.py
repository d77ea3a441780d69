"""Endless, resumable sampling order for the training data loader.

Upstream's sampler shuffles one permutation in place as it goes (a windowed swap per step), so the
item at position k depends on every step before it: a continued run would have to replay the
whole history to get back in step. Here each pass over the data ("epoch") has its own permutation,
drawn from a generator seeded by (seed, epoch). The item at global position k is therefore a pure
function of (seed, k): a continued run just starts at position `start_idx` = images already seen.

Global positions are dealt round-robin to ranks: rank r takes positions k with k % num_replicas == r,
so the ranks together consume positions 0, 1, 2, ... in order, num_replicas at a time.
"""

import numpy as np
import torch


def epoch_permutation(num_items, seed, epoch, shuffle=True):
    """The visiting order of pass `epoch` over `num_items` items.

    Args:
        num_items: dataset length (> 0).
        seed: run seed.
        epoch: pass index (>= 0).
        shuffle: False gives the identity order.

    Returns:
        int64 numpy array [num_items], a permutation of range(num_items).
    """
    if not shuffle:
        return np.arange(num_items, dtype=np.int64)
    # SeedSequence mixes (seed, epoch) into independent streams; plain seed+epoch would make run
    # seed 1 epoch 0 replay run seed 0 epoch 1.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
    return rng.permutation(num_items).astype(np.int64)


def item_at(num_items, seed, position, shuffle=True):
    """Dataset index at global sampler position `position` (for tests and debugging)."""
    epoch, offset = divmod(int(position), num_items)
    return int(epoch_permutation(num_items, seed, epoch, shuffle)[offset])


class InfiniteSampler(torch.utils.data.Sampler):
    """Yields dataset indices forever; the stream is a pure function of (seed, rank, position).

    Args:
        dataset: a sized dataset.
        rank: rank of this process.
        num_replicas: number of processes sharing the stream.
        shuffle: shuffle each pass (else sequential order).
        seed: run seed; every rank must use the same one.
        start_idx: global position to start from (images already consumed by all ranks together,
            i.e. cur_nimg when continuing a run).
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, start_idx=0):
        assert len(dataset) > 0, 'InfiniteSampler needs a non-empty dataset'
        assert num_replicas > 0 and 0 <= rank < num_replicas
        assert start_idx >= 0
        self.num_items = len(dataset)
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.start_idx = int(start_idx)

    def __iter__(self):
        # First global position at or after start_idx that belongs to this rank.
        pos = self.start_idx + (self.rank - self.start_idx) % self.num_replicas
        epoch, offset = divmod(pos, self.num_items)
        order = epoch_permutation(self.num_items, self.seed, epoch, self.shuffle)
        while True:
            yield int(order[offset])
            offset += self.num_replicas
            while offset >= self.num_items:  # may skip a whole pass when num_replicas > num_items
                offset -= self.num_items
                epoch += 1
                order = epoch_permutation(self.num_items, self.seed, epoch, self.shuffle)
