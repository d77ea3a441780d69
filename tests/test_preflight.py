"""Everything a run needs is checked before its first step, and `--dry-run` refuses exactly what the
real run refuses: the metric set, the output directory, the checkpoint a continue would use, and
calc_metrics.py's --detector file."""

import os
import subprocess

import pytest
from click.testing import CliRunner

import dnnlib
from cli_helpers import EXIT_USAGE, TreeState, refused
from training import run_dir as run_dir_lib
from training_helpers import write_image_zip


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    """A 32 px training set, a 64 px set, a labelled 32 px set, and a 32 px set with other labels."""
    root = tmp_path_factory.mktemp('sets')
    return dict(data=write_image_zip(str(root / 'd32.zip')),
                big=write_image_zip(str(root / 'd64.zip'), res=64),
                labelled=write_image_zip(str(root / 'd32l.zip'), labels=True))


def _train(args):
    import train
    return CliRunner().invoke(train.main, args, prog_name='train.py')


def _base(outdir, data):
    return ['--outdir', str(outdir), '--data', data, '--device=cpu', '--batch=4', '--kimg=1', '--metrics=none',
            '--workers=0', '--cbase=256', '--cmax=16', '--map-depth=2', '--aug=noaug', '--tick=0.004']


@pytest.fixture
def started_never(monkeypatch):
    """Fails the test if training would start (the refusal must come before the first step)."""
    import train

    def launch(*_args, **_kwargs):
        raise AssertionError('training started')
    monkeypatch.setattr(train, 'launch', launch)


# ----------------------------------------------------------------------------
# The metric set.


@pytest.mark.parametrize('dry', [True, False])
def test_metric_set_at_another_resolution_is_refused_up_front(sets, tmp_path, dry, started_never):
    outdir = tmp_path / 'runs'
    state = TreeState(outdir, sets['big'])
    res = _train(_base(outdir, sets['data']) + ['--metric-data', sets['big']] + (['-n'] if dry else []))
    line = refused(res, EXIT_USAGE, '--metric-data', sets['big'], '64x64', '32x32', state=state)
    assert 'Dry run' not in res.output, line


def test_conditional_run_needs_labels_in_the_metric_set(sets, tmp_path, started_never):
    outdir = tmp_path / 'runs'
    argv = ['--outdir', str(outdir), '--data', sets['labelled'], '--cond=1', '--device=cpu', '-n']
    refused(_train(argv + ['--metric-data', sets['data']]), EXIT_USAGE, '--metric-data', sets['data'], 'labels',
            state=TreeState(outdir))
    res = _train(argv + ['--metric-data', sets['labelled']])
    assert res.exit_code == 0, res.output  # the same labels: accepted


def test_unreadable_metric_set_is_refused_by_the_dry_run(sets, tmp_path):
    junk = tmp_path / 'junk.zip'
    junk.write_bytes(b'not a zip at all')
    refused(_train(_base(tmp_path / 'runs', sets['data']) + ['--metric-data', str(junk), '-n']), EXIT_USAGE,
            '--metric-data', str(junk))


def test_metric_set_options_are_recorded_with_labels_for_conditional_runs(sets, tmp_path):
    import train
    args, _ = train.prepare(dict(outdir=str(tmp_path), data=sets['labelled'], cond=True, device='cpu',
                                 metric_data=sets['labelled']))
    assert args.metric_dataset_kwargs.use_labels is True and args.metric_dataset_kwargs.resolution == 32


# ----------------------------------------------------------------------------
# The output directory.


@pytest.mark.parametrize('where', ['file', 'under-file'])
def test_outdir_blocked_by_a_file_is_refused_by_the_dry_run(sets, tmp_path, where):
    blocker = tmp_path / 'blocker'
    blocker.write_text('mine')
    outdir = blocker if where == 'file' else blocker / 'runs'
    state = TreeState(tmp_path)
    refused(_train(_base(outdir, sets['data']) + ['-n']), EXIT_USAGE, '--outdir', str(outdir), 'not a directory',
            state=state)


def test_read_only_outdir_is_refused_by_the_dry_run(sets, tmp_path):
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mnt)], capture_output=True).returncode:
        pytest.skip('mounting a tmpfs is not permitted here (needs root)')
    try:
        subprocess.run(['mount', '-o', 'remount,ro', str(mnt)], check=True)
        refused(_train(_base(mnt / 'runs', sets['data']) + ['-n']), EXIT_USAGE, '--outdir', str(mnt / 'runs'),
                'Read-only file system', state=TreeState(mnt))
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


# ----------------------------------------------------------------------------
# The checkpoint a continue would use.


def _damage_payloads(run_dir):
    """Corrupt the tensors of every training-state file but keep their headers readable."""
    from torch_utils import checkpoint
    for path in checkpoint.list_states(run_dir):
        size = os.path.getsize(path)
        with open(path, 'r+b') as f:
            f.seek(size - 64)
            f.write(b'\xff' * 64)


def test_dry_run_does_not_say_continuing_when_every_checkpoint_is_damaged(sets, tmp_path):
    import train
    from torch_utils import checkpoint
    argv = _base(tmp_path, sets['data'])
    opts = dict(outdir=str(tmp_path), data=sets['data'], device='cpu', batch=4, kimg=1, metrics='none', workers=0,
                cbase=256, cmax=16, map_depth=2, aug='noaug', tick=0.004)
    args, plan = train.prepare(opts)
    run_dir = os.path.join(str(tmp_path), os.path.basename(args.run_dir))
    os.makedirs(run_dir)
    dnnlib.util.atomic_write_text(os.path.join(run_dir, 'training_options.json'),
                                  run_dir_lib.to_json(dict(args, run_dir=run_dir)))
    for nimg in (4000, 8000):
        checkpoint.save_state(run_dir, dict(x=list(range(100))), nimg, meta=dict(finished=False))
    assert 'Continuing' in _train(argv + ['-n']).output  # intact: the dry run says what the run will do
    _damage_payloads(run_dir)
    state = TreeState(tmp_path)
    for dry in (['-n'], []):
        res = _train(argv + dry)
        refused(res, EXIT_USAGE, '--outdir', run_dir, 'damaged', state=state)
        assert 'Continuing' not in res.output


# ----------------------------------------------------------------------------
# calc_metrics.py --detector PATH


def test_missing_detector_file_is_named_before_any_network_is_loaded(tmp_path, monkeypatch):
    import calc_metrics
    net = tmp_path / 'net.pkl'
    net.write_bytes(b'not a pickle')  # loading it would fail naming --network: the detector must come first

    def no_load(*_args, **_kwargs):
        raise AssertionError('a network was loaded before the detector was checked')
    monkeypatch.setattr(calc_metrics, 'load_snapshot', no_load)
    missing = str(tmp_path / 'inception.pt')
    res = CliRunner().invoke(calc_metrics.main, ['--network', str(net), '--detector', missing, '--device', 'cpu'])
    refused(res, EXIT_USAGE, '--detector', missing, 'no such file', state=TreeState(tmp_path))
