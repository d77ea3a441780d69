"""Continue = same run: a crashed run continued from its training state ends bit-identical to an
uninterrupted one. Transfer = weights only: a run started from a pickle begins at its weights.
"""

import os

import pytest
import torch

import dnnlib

import schedulers
from training_helpers import ada_kwargs, list_files, tiny_loop_kwargs, write_image_zip


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    return write_image_zip(str(tmp_path_factory.mktemp('data') / 'tiny.zip'))


def _resume_kwargs(data_zip, run_dir, **extra):
    # 2-iteration ticks, state every 2 ticks, ADA moving fast, an lr schedule: every kind of state.
    return tiny_loop_kwargs(data_zip, run_dir, total_kimg=0.044, kimg_per_tick=0.008, checkpoint_ticks=2,
                            network_snapshot_ticks=3, snap_kimg=[0.02],
                            lr_schedule=schedulers.parse_lr_schedule('exp:first=0.003,final=0.0005'),
                            **ada_kwargs(ada_kimg=0.02, ada_target=-2, ada_p_max=0.9), **extra)


def _crash_after_ticks(n):
    calls = dict(n=0)

    def progress(cur_kimg, total_kimg):
        calls['n'] += 1
        if calls['n'] == n:
            raise _Crash(f'simulated crash after tick {n - 1}')
    return progress


def _assert_same_state(a, b):
    for name in ('G', 'D', 'G_ema'):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f'{name}.{key} differs'
    for name in ('G', 'D'):
        oa, ob = a.opts[name].opt.state_dict()['state'], b.opts[name].opt.state_dict()['state']
        assert oa.keys() == ob.keys()
        for idx in oa:
            for key in oa[idx]:
                assert torch.equal(torch.as_tensor(oa[idx][key]), torch.as_tensor(ob[idx][key])), f'{name} opt {idx}.{key}'
    assert a.ada_p == b.ada_p
    assert torch.equal(a.loss.pl_mean.cpu(), b.loss.pl_mean.cpu())
    assert (a.cur_nimg, a.cur_tick, a.batch_idx) == (b.cur_nimg, b.cur_tick, b.batch_idx)


@pytest.mark.slow
def test_continue_after_crash_is_bit_identical(data_zip, tmp_path):
    from training import training_loop
    ref = training_loop.training_loop(**_resume_kwargs(data_zip, str(tmp_path / 'ref')))

    run_dir = str(tmp_path / 'crashed')
    with pytest.raises(_Crash):
        # Crash inside tick 3's maintenance: the newest state is tick 2's (written after tick 2).
        training_loop.training_loop(**_resume_kwargs(data_zip, run_dir, progress_fn=_crash_after_ticks(4)))
    assert list_files(run_dir, 'training-state-') == ['training-state-000000.pt']
    continued = training_loop.training_loop(**_resume_kwargs(data_zip, run_dir))
    assert continued.continued
    _assert_same_state(ref, continued)
    # target -2 makes every adjustment raise p by 4*4/20 = 0.8, capped by ada_p_max.
    assert ref.ada_p == 0.9
    # Same snapshot names in both runs (kimg point and tick snapshots).
    assert list_files(run_dir, 'network-snapshot-') == list_files(str(tmp_path / 'ref'), 'network-snapshot-')
    assert 'network-snapshot-000000.020.pkl' in list_files(run_dir, 'network-snapshot-')


def test_checkpoint_roundtrip_is_weights_only_and_atomic(tmp_path):
    from torch_utils import checkpoint
    import numpy as np
    np.random.seed(5)
    torch.manual_seed(5)
    rng = checkpoint.get_rng_state()
    expected = (np.random.rand(), torch.rand([]).item())
    p1 = checkpoint.save_state(str(tmp_path), dict(cur_nimg=1000, finished=False, rng=rng), 1000)
    p2 = checkpoint.save_state(str(tmp_path), dict(cur_nimg=2000, finished=True, rng=rng), 2000)
    assert not os.path.exists(p1) and os.path.exists(p2)
    assert [n for n in os.listdir(tmp_path)] == ['training-state-000002.pt']  # no temp files left
    path, state = checkpoint.load_latest(str(tmp_path))
    assert path == p2 and state['cur_nimg'] == 2000
    checkpoint.set_rng_state(state['rng'])
    assert (np.random.rand(), torch.rand([]).item()) == expected
    assert checkpoint.read_progress(p2) == (2000, True)
    assert not checkpoint.has_unfinished_state(str(tmp_path))
    # weights_only refuses arbitrary objects.
    torch.save(dict(obj=_Crash('x')), str(tmp_path / 'training-state-000009.pt'))
    with pytest.raises(Exception):
        checkpoint.load_latest(str(tmp_path))


def test_transfer_starts_from_source_weights(data_zip, tmp_path):
    from patches import network_pickle
    from training import training_loop
    src = training_loop.training_loop(**tiny_loop_kwargs(data_zip, str(tmp_path / 'src'), total_kimg=0.008,
                                                         network_snapshot_ticks=1))
    pkl = os.path.join(str(tmp_path / 'src'), 'network-snapshot-000000.pkl')
    source = network_pickle.load_network_pkl(pkl)
    z = torch.randn([3, 32], generator=torch.Generator().manual_seed(1))
    c = torch.zeros([3, 0])
    with torch.no_grad():
        want = source['G_ema'](z, c, noise_mode='const')
    seen = {}

    def first_step(S):
        if S.batch_idx == 1:
            with torch.no_grad():
                seen['img'] = S.G_ema(z, c, noise_mode='const')
            seen['nimg'] = S.step_nimg

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
    del src
