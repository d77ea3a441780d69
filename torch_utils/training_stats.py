"""Cheap training statistics: report from anywhere, collect once per tick.

`report(name, value)` adds the raw moments (count, sum, sum of squares) of a tensor to a running
accumulator that lives on the tensor's own device, so calling it inside the training step costs a
few tiny kernels and never waits for the GPU. A `Collector` later gathers those moments, sums them
across ranks with a single `all_reduce`, and turns them into num/mean/std over the interval since
its previous `update()` (as upstream, stats are pooled over every rank's samples; std is the
population std computed from the raw moments).

Multi-rank rule: every rank must have reported the same set of names before a collector update,
because the all-reduce packs the moments of all names into one tensor in sorted-name order.
`report0` takes care of this for rank-0-only statistics by registering the name with zero
samples on the other ranks.
"""

import re

import numpy as np
import torch

import dnnlib

_NUM_MOMENTS = 3            # [count, sum, sum of squares]
_DTYPE = torch.float64      # float64 so that long ticks do not lose precision in sum of squares

_rank = 0                   # rank of this process, set by init_multiprocessing()
_sync_device = None         # device used for the cross-rank reduction (None = CPU)
_pending = dict()           # name -> {device: moments tensor [3]}, not yet collected
_cumulative = dict()        # name -> CPU moments tensor [3], everything collected so far (all ranks)


def init_multiprocessing(rank, sync_device):
    """Declare this process's rank and the device used for the cross-rank reduction.

    Call once per process before collecting statistics in a multi-process run. Single-process
    runs need not call it.

    Args:
        rank: rank of this process (0 for the main process).
        sync_device: device for `torch.distributed.all_reduce` (a CUDA device with NCCL, None or
            'cpu' with gloo).
    """
    global _rank, _sync_device
    _rank = int(rank)
    _sync_device = None if sync_device is None else torch.device(sync_device)


def report(name, value):
    """Accumulate the moments of `value` under `name`; no host-device synchronisation.

    Args:
        name: statistic name, e.g. 'Loss/G/loss'.
        value: a tensor, number, or sequence of numbers. Every element is one sample; an empty
            value registers the name without adding samples.

    Returns:
        `value`, unchanged, so the call can wrap an expression.
    """
    elems = torch.as_tensor(value)
    elems = elems.detach().flatten().to(_DTYPE)
    # Stack of three reductions on the tensor's device: count is computed as a sum of ones rather
    # than from numel so that no host value has to be uploaded (which could force a sync).
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
    per_device = _pending.setdefault(name, dict())
    if moments.device in per_device:
        per_device[moments.device].add_(moments)
    else:
        per_device[moments.device] = moments
    return value


def report0(name, value):
    """Like `report`, but only rank 0 contributes samples (other ranks only register the name).

    Args:
        name: statistic name.
        value: tensor, number or sequence of numbers.

    Returns:
        `value`, unchanged.
    """
    report(name, value if _rank == 0 else [])
    return value


def _distributed_world_size():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _collect(names):
    """Move the pending moments of `names` into the cumulative totals, summed over all ranks."""
    if not names:
        return
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    rows = []
    for name in names:
        row = torch.zeros([_NUM_MOMENTS], dtype=_DTYPE, device=device)
        for moments in _pending.get(name, dict()).values():
            row += moments.to(device)
        rows.append(row)
        _pending.pop(name, None)
    stacked = torch.stack(rows)  # [len(names), 3]
    if _distributed_world_size() > 1:
        torch.distributed.all_reduce(stacked)  # one collective per update, whatever the name count
    stacked = stacked.cpu()
    for name, row in zip(names, stacked):
        if name in _cumulative:
            _cumulative[name] += row
        else:
            _cumulative[name] = row.clone()


class Collector:
    """Reads the reported statistics over the interval between consecutive `update()` calls.

    Several collectors can coexist; each keeps its own baseline of the cumulative totals.

    Args:
        regex: only names matching this regular expression (re.fullmatch) are collected.
        keep_previous: when a name received no samples during an interval, keep the values of the
            previous interval instead of reporting num=0, mean=std=nan.
    """

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._baseline = dict()   # name -> cumulative moments at the previous update
        self._moments = dict()    # name -> moments of the latest interval (numpy float64 [3])
        self.update()
        self._moments.clear()     # the construction-time update only sets the baseline

    def names(self):
        """Sorted names known to this collector after the latest `update()`.

        Returns:
            list of str.
        """
        return sorted(self._moments)

    def update(self):
        """Collect the moments reported since the previous update (reduced across ranks).

        Must be called on every rank in a multi-process run (it performs a collective).
        """
        known = set(_pending) | set(_cumulative)
        names = sorted(name for name in known if self._regex.fullmatch(name))
        _collect(names)
        for name in names:
            total = _cumulative[name].numpy()
            delta = total - self._baseline.get(name, np.zeros([_NUM_MOMENTS]))
            self._baseline[name] = total.copy()
            if delta[0] > 0 or not self._keep_previous or name not in self._moments:
                self._moments[name] = delta

    def num(self, name):
        """Number of samples of `name` in the latest interval (0 if unknown).

        Args:
            name: statistic name.

        Returns:
            int.
        """
        moments = self._moments.get(name)
        return 0 if moments is None else int(round(moments[0]))

    def mean(self, name):
        """Mean of `name` over the latest interval (nan if it had no samples).

        Args:
            name: statistic name.

        Returns:
            float.
        """
        moments = self._moments.get(name)
        if moments is None or moments[0] <= 0:
            return float('nan')
        return float(moments[1] / moments[0])

    def std(self, name):
        """Population standard deviation of `name` over the latest interval, from raw moments.

        Args:
            name: statistic name.

        Returns:
            float (nan if the interval had no samples).
        """
        moments = self._moments.get(name)
        if moments is None or moments[0] <= 0:
            return float('nan')
        mean = moments[1] / moments[0]
        # E[x^2] - E[x]^2 can dip a hair below zero by rounding when all samples are equal.
        variance = max(moments[2] / moments[0] - mean * mean, 0.0)
        return float(np.sqrt(variance))

    def as_dict(self):
        """All statistics of the latest interval.

        Returns:
            dict name -> EasyDict(num=int, mean=float, std=float), in sorted-name order.
        """
        return {name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                for name in self.names()}

    def __getitem__(self, name):
        """Shorthand for `mean(name)`."""
        return self.mean(name)
