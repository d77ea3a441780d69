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
