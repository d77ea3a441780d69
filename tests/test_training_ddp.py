"""Two-process training on CPU (gloo): gradients averaged across ranks, networks stay identical."""

import os

import pytest
import torch

from training_helpers import list_files, read_jsonl, tiny_loop_kwargs, write_image_zip


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    from torch_utils import distributed
    from training import training_loop
    data = write_image_zip(str(tmp_path / 'tiny.zip'))
    run_dir = str(tmp_path / 'run')
    os.makedirs(run_dir)
    # batch 8 over 2 ranks = 4 per rank; the final network snapshot checks cross-rank consistency.
    kw = tiny_loop_kwargs(data, run_dir, num_gpus=2, batch_size=8, batch_gpu=4, total_kimg=0.032,
                          kimg_per_tick=0.016, network_snapshot_ticks=1000)
    distributed.launch(training_loop.run_training, (kw,), 2, 'cpu')
    assert 'network-snapshot-000000.pkl' in list_files(run_dir, 'network-snapshot-')
    rows = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    assert rows[-1]['Progress/kimg']['mean'] == pytest.approx(0.032)
    # Loss statistics are pooled over both ranks: Gmain reports 4 samples per rank per iteration.
    last_tick_iters = 1  # ticks end at 8 (tick 0), 24 (tick 1) and 32 images (tick 2, done)
    assert rows[-1]['Loss/G/loss']['num'] == 2 * 4 * last_tick_iters
    from torch_utils import checkpoint
    _, meta, parts = checkpoint.load_latest(run_dir)
    assert meta['cur_nimg'] == parts['counters']['cur_nimg'] == 32 and meta['finished']
    assert all(torch.isfinite(v).all() for v in parts['G'].values() if v.is_floating_point())
    with open(os.path.join(run_dir, 'log.txt')) as f:
        assert 'Exiting...' in f.read()


@pytest.mark.slow
def test_train_py_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 train.py --gpus 2` on CPU: rank 0 prepares the run, both ranks train."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = write_image_zip(str(tmp_path / 'tiny.zip'))
    outdir = str(tmp_path / 'runs')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(root, 'train.py'), f'--outdir={outdir}', f'--data={data}', '--gpus=2', '--device=cpu',
           '--batch=8', '--kimg=1', '--cbase=256', '--cmax=16', '--map-depth=2', '--metrics=none',
           '--aug=noaug', '--workers=0', '--snap=1000']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (run_name,) = os.listdir(outdir)
    run_dir = os.path.join(outdir, run_name)
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        assert json.load(f)['num_gpus'] == 2
    from torch_utils import checkpoint
    _, meta, _parts = checkpoint.load_latest(run_dir)
    assert meta['cur_nimg'] == 1000 and meta['finished']
    with open(os.path.join(run_dir, 'status.json')) as f:
        assert json.load(f)['state'] == 'finished'
    assert 'network-snapshot-000001.pkl' in list_files(run_dir, 'network-snapshot-')
    rows = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    # Gmain reports batch_gpu=4 samples per rank: pooled over 2 ranks, 8 per iteration.
    assert rows[-1]['Loss/G/loss']['num'] % 8 == 0 and rows[-1]['Loss/G/loss']['num'] > 0


_DDP_DRIVER = '''
import sys
from torch_utils import distributed
from training import outputs, preempt, training_loop
from training_helpers import tiny_loop_kwargs
kw = tiny_loop_kwargs(sys.argv[2], sys.argv[1], num_gpus=2, batch_size=8, batch_gpu=4, total_kimg=0.4,
                      kimg_per_tick=0.016, network_snapshot_ticks=1000, checkpoint_ticks=1000)
distributed.launch(training_loop.run_training, (kw,), 2, 'cpu', forward_signals=preempt.SIGNALS)
sys.exit(75 if outputs.read_status(sys.argv[1])['state'] == 'preempted' else 0)
'''


@pytest.mark.slow
def test_sigterm_to_the_parent_stops_both_ranks_with_a_checkpoint(tmp_path):
    """The parent forwards SIGTERM to the spawned ranks; they agree, write one checkpoint, and stop."""
    import json
    import signal
    import subprocess
    import sys
    import time
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests_dir)
    data = write_image_zip(str(tmp_path / 'tiny.zip'))
    run_dir = str(tmp_path / 'run')
    os.makedirs(run_dir)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([root, tests_dir]))
    proc = subprocess.Popen([sys.executable, '-c', _DDP_DRIVER, run_dir, data], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stats = os.path.join(run_dir, 'stats.jsonl')
    deadline = time.time() + 600  # hang guard only
    while time.time() < deadline and not (os.path.exists(stats) and len(read_jsonl(stats)) >= 2):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 75, out[-3000:]
    with open(os.path.join(run_dir, 'status.json')) as f:
        status = json.load(f)
    assert status['state'] == 'preempted' and 0 < status['cur_kimg'] < 0.4
    from torch_utils import checkpoint
    assert checkpoint.run_progress(run_dir)['cur_nimg'] == round(status['cur_kimg'] * 1000)


# ----------------------------------------------------------------------------
# Gradient averaging overlapped with backward (torch_utils.distributed.GradAverager).


def _averaging_worker(rank, kw, out_dir, mode):
    """One rank of a short run; saves its final state and the gradient all-reduces it issued."""
    import torch.distributed as dist
    from torch_utils import distributed
    from training import phases, training_loop
    distributed.BUCKET_BYTES = 16 * 1024  # several buckets even for the tiny networks
    if mode == 'one all-reduce':  # the previous implementation: one flat all-reduce after backward
        run_phase = phases.run_phase
        phases.run_phase = lambda *args: run_phase(*args[:6])
    calls, all_reduce = [], dist.all_reduce

    def logged(tensor, *args, **kwargs):
        calls.append((tensor.data_ptr(), tensor.numel(), torch._C._current_graph_task_id() != -1))  # -1: outside
        return all_reduce(tensor, *args, **kwargs)
    dist.all_reduce = logged
    model = training_loop.training_loop(rank=rank, **kw).model
    flats = {b.flat.data_ptr(): net for net, a in model.averagers.items() for b in a.buckets or []}
    sizes = {sum(p.numel() for p in module.parameters()): net for net, module in (('G', model.G), ('D', model.D))}
    grad_calls = [(flats.get(ptr) or sizes.get(n), inside) for ptr, n, inside in calls if ptr in flats or n in sizes]
    torch.save(dict(G=model.G.state_dict(), D=model.D.state_dict(), G_ema=model.G_ema.state_dict(),
                    G_opt=model.opts['G'].state_dict(), D_opt=model.opts['D'].state_dict(), grad_calls=grad_calls,
                    buckets={net: len(a.buckets or []) for net, a in model.averagers.items()}),
               os.path.join(out_dir, f'{mode}-{rank}.pt'))


def _tensors(state, skip):
    """{name: tensor} of a saved state: network tensors and Adam moments, names matching `skip` left out."""
    import re
    items = [(f'{net}.{k}', v) for net in ('G', 'D', 'G_ema') for k, v in state[net].items()]
    for net in ('G_opt', 'D_opt'):
        items += [(f'{net}.{i}.{k}', v) for i, s in state[net]['state'].items() for k, v in s.items()]
    return {k: v for k, v in items if skip is None or not re.fullmatch(skip, k)}


def _bits_differ(a, b, skip=None):
    """Names whose tensors differ in any bit between two saved states."""
    a, b = _tensors(a, skip), _tensors(b, skip)
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_overlapped_bucket_average_is_bit_identical_across_ranks_and_to_one_all_reduce(tmp_path):
    """2 gloo ranks, 6 steps with every phase: both ranks end with the same bits, and with the same bits as
    the previous implementation (one all-reduce of all gradients after backward). Exact, not approximate:
    with two ranks each element's sum a + b does not depend on how the gradients are cut into buckets."""
    import time
    from torch_utils import distributed
    data = write_image_zip(str(tmp_path / 'tiny.zip'))
    steps, states = 6, {}
    for mode in ('buckets', 'one all-reduce'):
        run_dir = str(tmp_path / mode.replace(' ', '-'))
        os.makedirs(run_dir)
        # 8 images over 2 ranks, 2 per round: two accumulation rounds per phase; Greg every 2, Dreg every 4 steps.
        kw = tiny_loop_kwargs(data, run_dir, num_gpus=2, batch_size=8, batch_gpu=2, total_kimg=steps * 8 / 1000,
                              kimg_per_tick=1000, G_reg_interval=2, D_reg_interval=4)
        start = time.time()
        distributed.launch(_averaging_worker, (kw, str(tmp_path), mode), 2, 'cpu')
        print(f'{mode}: {time.time() - start:.1f} s')
        states[mode] = [torch.load(str(tmp_path / f'{mode}-{r}.pt'), weights_only=False) for r in range(2)]
    ours, previous = states['buckets'], states['one all-reduce']
    assert _bits_differ(ours[0], ours[1], skip=r'.*\.w_avg') == []  # ranks agree (w_avg follows each rank's z)
    for rank in range(2):
        assert _bits_differ(ours[rank], previous[rank]) == []       # the previous implementation's bits
    phase_runs = {net: steps + -(-steps // interval) for net, interval in (('G', 2), ('D', 4))}  # main + reg
    _assert_overlapped(ours[0], previous[0], phase_runs)


def _assert_overlapped(ours, previous, phase_runs):
    """Several buckets per network, all sent from inside backward except in each network's first phase (it
    learns the order gradients arrive in); the previous path sent one buffer per phase, after backward."""
    import collections
    assert collections.Counter(previous['grad_calls']) == {(net, False): n for net, n in phase_runs.items()}
    buckets = ours['buckets']
    assert buckets['G'] > 1 and buckets['D'] > 1, buckets
    expected = {(net, False): buckets[net] for net in buckets}
    expected.update({(net, True): (phase_runs[net] - 1) * buckets[net] for net in buckets})
    assert collections.Counter(ours['grad_calls']) == expected


def test_bucket_layout_keeps_the_order_and_cuts_by_size_and_dtype():
    from torch_utils.distributed import _bucket_layout
    params = [torch.zeros(10), torch.zeros(10), torch.zeros(30), torch.zeros(5, dtype=torch.float64), torch.zeros(1)]
    # 80 bytes a bucket: a float64 tensor never shares one with float32; an oversized tensor gets its own.
    assert _bucket_layout(params, [4, 3, 2, 1, 0], bucket_bytes=80) == [[4], [3], [2], [1, 0]]
    assert _bucket_layout(params, [0, 1, 2], bucket_bytes=1 << 20) == [[0, 1, 2]]
