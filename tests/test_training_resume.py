"""Continue = same run: a crashed, killed or preempted run continued from its training state ends
bit-identical to an uninterrupted one, with each tick and evaluation logged once. Damaged
checkpoints fall back to the previous one. Transfer = weights only. Fresh runs are reproducible.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dnnlib

import schedulers
from training_helpers import ada_kwargs, list_files, read_jsonl, tiny_loop_kwargs, write_image_zip

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'training_helpers.py')


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    return write_image_zip(str(tmp_path_factory.mktemp('data') / 'tiny.zip'))


def _resume_kwargs(data_zip, run_dir, **extra):
    # 2-iteration ticks, state every 2 ticks, ADA moving fast, an lr schedule: every kind of state.
    kw = dict(total_kimg=0.044, kimg_per_tick=0.008, checkpoint_ticks=2, network_snapshot_ticks=3, snap_kimg=[0.02],
              lr_schedule=schedulers.parse_lr_schedule('exp:first=0.003,final=0.0005'),
              **ada_kwargs(ada_kimg=0.02, ada_target=-2, ada_p_max=0.9))
    kw.update(extra)
    return tiny_loop_kwargs(data_zip, run_dir, **kw)


def _crash_after_ticks(n):
    calls = dict(n=0)

    def progress(cur_kimg, total_kimg):
        calls['n'] += 1
        if calls['n'] == n:
            raise _Crash(f'simulated crash after tick {n - 1}')
    return progress


def _assert_same_parts(a, b):
    """Two checkpoints' parts (or Model.parts() dicts) hold the same bits."""
    for name in ('G', 'D', 'G_ema'):
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f'{name}.{key} differs'
    for name in ('G_opt', 'D_opt'):
        oa, ob = a[name]['state'], b[name]['state']
        assert oa.keys() == ob.keys()
        for idx in oa:
            for key in oa[idx]:
                assert torch.equal(torch.as_tensor(oa[idx][key]), torch.as_tensor(ob[idx][key])), f'{name} {idx}.{key}'
    assert a['ada'] == b['ada']
    assert torch.equal(a['loss']['pl_mean'], b['loss']['pl_mean'])


def _final_parts(run_dir):
    from torch_utils import checkpoint
    _path, meta, parts = checkpoint.load_latest(run_dir)
    assert meta['finished']
    return parts


def _ticks(run_dir):
    return [int(r['Progress/tick']['mean']) for r in read_jsonl(os.path.join(run_dir, 'stats.jsonl'))]


@pytest.fixture(scope='module')
def reference(data_zip, tmp_path_factory):
    from training import training_loop
    run_dir = str(tmp_path_factory.mktemp('ref'))
    result = training_loop.training_loop(**_resume_kwargs(data_zip, run_dir))
    return dict(run_dir=run_dir, result=result, parts=_final_parts(run_dir))


@pytest.mark.slow
def test_continue_after_crash_is_bit_identical(data_zip, tmp_path, reference):
    from training import training_loop
    run_dir = str(tmp_path / 'crashed')
    with pytest.raises(_Crash):
        # Crash inside tick 3's maintenance: the newest state is tick 2's (written after tick 2).
        training_loop.training_loop(**_resume_kwargs(data_zip, run_dir, progress_fn=_crash_after_ticks(4)))
    assert list_files(run_dir, 'training-state-') == ['training-state-000000.004.pt', 'training-state-000000.020.pt']
    assert json.load(open(os.path.join(run_dir, 'status.json')))['state'] == 'interrupted'
    continued = training_loop.training_loop(**_resume_kwargs(data_zip, run_dir))
    assert continued.continued and continued.state == 'finished'
    _assert_same_parts(reference['parts'], _final_parts(run_dir))
    # target -2 makes every adjustment raise p by 4*4/20 = 0.8, capped by ada_p_max (a float32 buffer).
    assert reference['result'].model.ada.p == pytest.approx(0.9)
    # Same snapshot names in both runs (kimg point and tick snapshots); each tick logged once.
    assert list_files(run_dir, 'network-snapshot-') == list_files(reference['run_dir'], 'network-snapshot-')
    assert 'network-snapshot-000000.020.pkl' in list_files(run_dir, 'network-snapshot-')
    assert _ticks(run_dir) == _ticks(reference['run_dir']) == list(range(6))
    status = json.load(open(os.path.join(run_dir, 'status.json')))
    assert (status['state'], status['evaluated_kimg'], status['snap_kimg']) == ('finished', [0.02], [0.02])


def test_checkpoint_roundtrip_checksum_keep_two_and_weights_only(tmp_path):
    from torch_utils import checkpoint
    import numpy as np
    np.random.seed(5)
    torch.manual_seed(5)
    rng = checkpoint.get_rng_state()
    expected = (np.random.rand(), torch.rand([]).item())
    paths = [checkpoint.save_state(str(tmp_path), dict(x=torch.arange(3) * n, rng=rng), n * 1000,
                                   meta=dict(finished=n == 3)) for n in (1, 2, 3)]
    assert sorted(os.listdir(tmp_path)) == ['training-state-000002.pt', 'training-state-000003.pt']  # no temp files
    path, meta, parts = checkpoint.load_latest(str(tmp_path))
    assert path == paths[2] and meta == dict(finished=True, cur_nimg=3000) and parts['x'].tolist() == [0, 3, 6]
    checkpoint.set_rng_state(parts['rng'])
    assert (np.random.rand(), torch.rand([]).item()) == expected
    assert checkpoint.read_meta(paths[2])['finished'] and checkpoint.run_progress(str(tmp_path))['finished']
    # weights_only refuses arbitrary objects even inside a correctly checksummed file.
    checkpoint.save_state(str(tmp_path / 'evil'), dict(obj=_Crash('x')), 9000)
    with pytest.raises(checkpoint.UnreadableState, match='cannot load payload'):
        checkpoint.load_state(checkpoint.latest_state_path(str(tmp_path / 'evil')))


def _damage(path, how):
    size = os.path.getsize(path)
    if how == 'truncated':
        os.truncate(path, size // 2)
    elif how == 'zeroed':  # what a crashed file system leaves: the right length, all zeros
        with open(path, 'r+b') as f:
            f.write(b'\0' * size)
    else:  # one flipped byte in the payload
        with open(path, 'r+b') as f:
            f.seek(size - 100)
            byte = f.read(1)
            f.seek(size - 100)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
@pytest.mark.parametrize('how', ['corrupt', 'truncated', 'zeroed'])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(data_zip, tmp_path, reference, how, capsys):
    from torch_utils import checkpoint
    from training import training_loop
    run_dir = str(tmp_path / 'run')
    with pytest.raises(_Crash):
        training_loop.training_loop(**_resume_kwargs(data_zip, run_dir, progress_fn=_crash_after_ticks(4)))
    older, newest = checkpoint.list_states(run_dir)
    _damage(newest, how)
    open(os.path.join(run_dir, '.training-state-000000.036.pt.abc.tmp'), 'wb').write(b'half')  # a killed writer's
    capsys.readouterr()
    continued = training_loop.training_loop(**_resume_kwargs(data_zip, run_dir))
    out = capsys.readouterr().out
    skip = [line for line in out.splitlines() if 'skipping unreadable training state' in line]
    assert len(skip) == 1 and os.path.basename(newest) in skip[0], out
    assert f'Continuing the run from {older}' in out
    assert continued.state == 'finished' and not any(n.endswith('.tmp') for n in os.listdir(run_dir))
    _assert_same_parts(reference['parts'], _final_parts(run_dir))
    assert _ticks(run_dir) == list(range(6))


def test_no_readable_checkpoint_is_refused_not_restarted(data_zip, tmp_path):
    """All states damaged: one line naming the files, and train.py refuses instead of starting over."""
    from torch_utils import checkpoint
    run_dir = str(tmp_path / 'run')
    os.makedirs(run_dir)
    path = checkpoint.save_state(run_dir, dict(x=torch.ones(3)), 4000, meta=dict(finished=False))
    _damage(path, 'zeroed')
    with pytest.raises(checkpoint.UnreadableState, match='no readable training state.*training-state-000004.pt'):
        checkpoint.load_latest(run_dir, warn=lambda line: None)
    assert checkpoint.run_progress(run_dir) == 'unreadable'


@pytest.mark.slow
def test_two_fresh_runs_are_bit_identical_with_finite_w_avg(data_zip, tmp_path):
    from training import training_loop
    runs = []
    for name in ('a', 'b'):
        kw = tiny_loop_kwargs(data_zip, str(tmp_path / name), total_kimg=0.016, print_summary=True, **ada_kwargs())
        runs.append(training_loop.training_loop(**kw).model)
    for key in ('G', 'D', 'G_ema'):
        sa, sb = getattr(runs[0], key).state_dict(), getattr(runs[1], key).state_dict()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f'{key}.{name}'
    assert torch.isfinite(runs[0].G.mapping.w_avg).all() and runs[0].G.mapping.w_avg.abs().sum() > 0


def _start(run_dir, data_zip, **overrides):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, HELPERS, run_dir, data_zip, json.dumps(overrides)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_rows(proc, run_dir, rows, timeout=600):
    """Wait (hang guard only) until stats.jsonl has `rows` lines."""
    path = os.path.join(run_dir, 'stats.jsonl')
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and len(read_jsonl(path)) >= rows:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError('the training process made no progress')


_SIGNAL_RUN = dict(total_kimg=0.1, kimg_per_tick=0.008, checkpoint_ticks=1000, network_snapshot_ticks=1,
                   metrics=['fake'], snap_kimg=[0.04, 0.08], ada=True)


@pytest.fixture(scope='module')
def signal_reference(data_zip, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp('sigref'))
    proc = _start(run_dir, data_zip, **_SIGNAL_RUN)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    return run_dir


def _assert_logged_once(run_dir, ref_dir):
    """stats.jsonl, log.txt and metric-fake.jsonl hold each tick and evaluation exactly once."""
    ticks = _ticks(run_dir)
    assert ticks == list(range(len(ticks)))
    with open(os.path.join(run_dir, 'log.txt')) as f:
        tick_lines = [int(line.split()[1]) for line in f if line.startswith('tick ')]
    assert tick_lines == ticks
    kimgs = [r['kimg'] for r in read_jsonl(os.path.join(run_dir, 'metric-fake.jsonl'))]
    assert len(kimgs) == len(set(kimgs)) and {0.04, 0.08} <= set(kimgs)
    status = json.load(open(os.path.join(run_dir, 'status.json')))
    assert status['state'] == 'finished' and status['evaluated_kimg'] == [0.04, 0.08]
    _assert_same_parts(_final_parts(ref_dir), _final_parts(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_and_exits_75(data_zip, tmp_path, signal_reference, sig):
    from torch_utils import checkpoint
    run_dir = str(tmp_path / 'run')
    proc = _start(run_dir, data_zip, **_SIGNAL_RUN)
    _wait_for_rows(proc, run_dir, 3)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 75, out
    assert f'Received {signal.Signals(sig).name}' in out
    status = json.load(open(os.path.join(run_dir, 'status.json')))
    assert status['state'] == 'preempted' and status['cur_kimg'] < 0.1
    assert checkpoint.run_progress(run_dir)['cur_nimg'] == round(status['cur_kimg'] * 1000)
    proc = _start(run_dir, data_zip, **_SIGNAL_RUN)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    _assert_logged_once(run_dir, signal_reference)


@pytest.mark.slow
def test_sigkill_and_continue_logs_each_tick_once(data_zip, tmp_path, signal_reference):
    run_dir = str(tmp_path / 'run')
    proc = _start(run_dir, data_zip, **dict(_SIGNAL_RUN, checkpoint_ticks=2))
    _wait_for_rows(proc, run_dir, 4)
    proc.kill()  # SIGKILL: no handler, no checkpoint; up to a tick and its evaluation are redone
    proc.communicate(timeout=900)
    proc = _start(run_dir, data_zip, **dict(_SIGNAL_RUN, checkpoint_ticks=2))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert 'Continuing the run from' in out
    _assert_logged_once(run_dir, signal_reference)


def test_transfer_starts_from_source_weights(data_zip, tmp_path):
    from patches import network_pickle
    from training import training_loop
    training_loop.training_loop(**tiny_loop_kwargs(data_zip, str(tmp_path / 'src'), total_kimg=0.008,
                                                   network_snapshot_ticks=1))
    pkl = os.path.join(str(tmp_path / 'src'), 'network-snapshot-000000.pkl')
    source = network_pickle.load_network_pkl(pkl)
    z = torch.randn([3, 32], generator=torch.Generator().manual_seed(1))
    c = torch.zeros([3, 0])
    with torch.no_grad():
        want = source['G_ema'](z, c, noise_mode='const')
    seen = {}

    def first_step(model, counters, step):
        if counters.batch_idx == 1:
            with torch.no_grad():
                seen['img'] = model.G_ema(z, c, noise_mode='const')
            seen['nimg'] = step.nimg

    # Huge ema_kimg: beta rounds to 1 in float32, so the first EMA step leaves G_ema exactly as loaded.
    sha = dnnlib.util.sha256_file(pkl)
    training_loop.training_loop(**tiny_loop_kwargs(data_zip, str(tmp_path / 'dst'), total_kimg=0.004, resume_pkl=pkl,
                                                   resume_pkl_sha256=sha, ema_kimg=1e9, ema_rampup=None,
                                                   iteration_fn=first_step))
    assert seen['nimg'] == 0  # counters start at zero for transfer
    assert torch.equal(seen['img'], want)
    # A source that changed after the run was set up (recorded sha256 differs) is refused.
    with pytest.raises(ValueError, match='sha256 .* differs .* transfer source changed'):
        training_loop.training_loop(**tiny_loop_kwargs(data_zip, str(tmp_path / 'dst2'), total_kimg=0.004,
                                                       resume_pkl=pkl, resume_pkl_sha256='0' * 64))


def test_headerless_state_of_the_previous_format_still_loads(tmp_path, reference):
    """A run checkpointed by the previous version (a bare torch.save dict) continues after an update."""
    from torch_utils import checkpoint
    parts = reference['parts']
    c = parts['counters']
    old = dict(version=1, cur_nimg=c['cur_nimg'], cur_tick=c['cur_tick'], batch_idx=c['batch_idx'], finished=True,
               G=parts['G'], D=parts['D'], G_ema=parts['G_ema'], augment_pipe={}, G_opt=parts['G_opt'],
               D_opt=parts['D_opt'], loss=parts['loss'], ada_p=parts['ada']['p'], ada_carry=parts['ada']['carry'],
               snap_kimg_done=c['points_done'], rng=parts['rng'])
    path = str(tmp_path / 'training-state-000000.pt')
    torch.save(old, path)
    assert checkpoint.read_meta(path) == dict(finished=True, cur_nimg=44)
    _, meta, loaded = checkpoint.load_latest(str(tmp_path))
    _assert_same_parts(parts, loaded)
    assert loaded['counters'] == dict(c, tick_start_nimg=c['cur_nimg'])
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(checkpoint.UnreadableState, match='headerless'):
        checkpoint.load_state(path)


FIXTURE_STATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'training-state-v2-000000.020.pt')


@pytest.mark.slow
def test_checkpoint_written_by_an_earlier_version_continues_bit_identically(data_zip, tmp_path, reference):
    """The fixture is the tick-2 state of the crash test above, as written by the code of 2026-12-07
    (before the training loop was reorganised); continuing from it must still reproduce the reference."""
    import shutil

    from training import training_loop
    run_dir = tmp_path / 'old'
    run_dir.mkdir()
    shutil.copy(FIXTURE_STATE, run_dir / 'training-state-000000.020.pt')
    continued = training_loop.training_loop(**_resume_kwargs(data_zip, str(run_dir)))
    assert continued.continued and continued.state == 'finished'
    _assert_same_parts(reference['parts'], _final_parts(str(run_dir)))
