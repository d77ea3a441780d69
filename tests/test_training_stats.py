"""training_stats: moments, collector intervals, regex filtering, cross-rank reduction."""

import math
import os
import socket
import tempfile

import numpy as np
import pytest
import torch

from torch_utils import training_stats


pytestmark = pytest.mark.usefixtures('fresh_training_stats')  # the accumulators are process globals


def test_mean_std_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=[17, 3]).astype(np.float32)
    b = rng.normal(-1.0, 0.5, size=[5]).astype(np.float32)
    collector = training_stats.Collector()
    training_stats.report('x', torch.from_numpy(a))
    training_stats.report('x', torch.from_numpy(b))
    training_stats.report('y', 2.5)
    training_stats.report('y', [1.0, 4.0])
    collector.update()
    samples = np.concatenate([a.ravel(), b]).astype(np.float64)
    assert collector.num('x') == samples.size
    assert collector.mean('x') == pytest.approx(samples.mean(), rel=1e-12, abs=1e-12)
    assert collector.std('x') == pytest.approx(samples.std(), rel=1e-10)  # population std (ddof=0)
    assert collector.num('y') == 3
    assert collector.mean('y') == pytest.approx(2.5)
    assert collector.std('y') == pytest.approx(np.std([2.5, 1.0, 4.0]))
    d = collector.as_dict()
    assert list(d) == ['x', 'y']
    assert d['y'].num == 3 and d['y'].mean == pytest.approx(2.5)


def test_report_returns_value_and_keeps_no_graph():
    x = torch.ones(3, requires_grad=True) * 2
    assert training_stats.report('g', x) is x
    moments = training_stats._pending['g'][x.device]
    assert not moments.requires_grad
    assert moments.dtype == torch.float64
    assert moments.tolist() == [3.0, 6.0, 12.0]


def test_constant_samples_have_zero_std():
    collector = training_stats.Collector()
    training_stats.report('c', torch.full([1000], 0.1))
    collector.update()
    assert collector.std('c') < 1e-6  # raw moments: only rounding noise remains
    assert collector.mean('c') == pytest.approx(0.1, rel=1e-7)


def test_intervals_and_keep_previous():
    keep = training_stats.Collector(keep_previous=True)
    drop = training_stats.Collector(keep_previous=False)
    training_stats.report('a', [1.0, 3.0])
    keep.update()
    drop.update()
    assert keep.mean('a') == drop.mean('a') == 2.0

    # Second interval: only the new samples count.
    training_stats.report('a', [10.0])
    keep.update()
    drop.update()
    assert keep.num('a') == drop.num('a') == 1
    assert keep.mean('a') == drop.mean('a') == 10.0

    # Third interval has no samples: keep_previous holds the last values, otherwise nan.
    keep.update()
    drop.update()
    assert keep.num('a') == 1 and keep.mean('a') == 10.0
    assert drop.num('a') == 0 and math.isnan(drop.mean('a')) and math.isnan(drop.std('a'))


def test_collectors_are_independent():
    first = training_stats.Collector()
    training_stats.report('a', [1.0])
    first.update()
    second = training_stats.Collector()  # starts after the first sample
    training_stats.report('a', [5.0])
    first.update()
    second.update()
    assert first.mean('a') == 5.0 and second.mean('a') == 5.0
    training_stats.report('a', [7.0, 9.0])
    second.update()
    first.update()
    assert first.mean('a') == second.mean('a') == 8.0


def test_samples_before_collector_creation_are_excluded():
    training_stats.report('a', [100.0])
    collector = training_stats.Collector()
    training_stats.report('a', [1.0])
    collector.update()
    assert collector.num('a') == 1 and collector.mean('a') == 1.0


def test_regex_filtering():
    loss = training_stats.Collector(regex='Loss/.*')
    every = training_stats.Collector()
    training_stats.report('Loss/G/loss', [1.0])
    training_stats.report('Timing/total_sec', [2.0])
    training_stats.report('MyLoss/x', [3.0])
    loss.update()
    every.update()
    assert loss.names() == ['Loss/G/loss']
    assert every.names() == ['Loss/G/loss', 'MyLoss/x', 'Timing/total_sec']
    # A name outside the regex stays pending for other collectors and is never lost.
    assert every.mean('Timing/total_sec') == 2.0


def test_empty_report_registers_name():
    collector = training_stats.Collector(keep_previous=False)
    training_stats.report('e', [])
    collector.update()
    assert collector.names() == ['e']
    assert collector.num('e') == 0 and math.isnan(collector.mean('e'))


def test_report0_only_counts_rank0(monkeypatch):
    collector = training_stats.Collector(keep_previous=False)
    monkeypatch.setattr(training_stats, '_rank', 1)
    training_stats.report0('r', [5.0])
    collector.update()
    assert collector.names() == ['r'] and collector.num('r') == 0
    monkeypatch.setattr(training_stats, '_rank', 0)
    training_stats.report0('r', [5.0])
    collector.update()
    assert collector.num('r') == 1


@pytest.mark.gpu
def test_report_stays_on_cuda_device():
    x = torch.arange(4.0, device='cuda')
    training_stats.report('cuda', x)
    moments = training_stats._pending['cuda'][x.device]
    assert moments.device.type == 'cuda'
    collector = training_stats.Collector()
    training_stats.report('cuda', x)
    training_stats.report('cuda', x.cpu())
    collector.update()
    assert collector.num('cuda') == 8 and collector.mean('cuda') == 1.5


# ---------------------------------------------------------------------------------------------
# Two ranks with gloo on CPU.

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir):
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                                         rank=rank, world_size=world_size)
    training_stats.init_multiprocessing(rank=rank, sync_device=None)
    collector = training_stats.Collector(regex='Loss/.*')
    # Rank r reports r+1 samples of value 10*(r+1); plus a rank-0-only progress value.
    training_stats.report('Loss/a', torch.full([rank + 1], 10.0 * (rank + 1)))
    training_stats.report0('Loss/progress', 7.0)
    collector.update()
    result = collector.as_dict()
    np.save(os.path.join(out_dir, f'rank{rank}.npy'),
            np.array([result['Loss/a'].num, result['Loss/a'].mean, result['Loss/a'].std,
                      result['Loss/progress'].num, result['Loss/progress'].mean]))
    torch.distributed.destroy_process_group()


def test_two_rank_gloo_reduction():
    with tempfile.TemporaryDirectory() as out_dir:
        torch.multiprocessing.spawn(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        results = [np.load(os.path.join(out_dir, f'rank{r}.npy')) for r in range(2)]
    samples = np.array([10.0, 20.0, 20.0])
    for res in results:  # both ranks see the pooled statistics
        assert res[0] == 3
        assert res[1] == pytest.approx(samples.mean())
        assert res[2] == pytest.approx(samples.std())
        assert res[3] == 1 and res[4] == 7.0
