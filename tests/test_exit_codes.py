"""The documented exit statuses (docs/exit-codes.md), with real signals sent to the process group as a
terminal or a scheduler sends them: 130 Ctrl-C, 75 SIGTERM, 2 usage errors, 1 other failures."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from cli_helpers import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USAGE, TreeState, refused,
                         wait_while_running)
from training_helpers import write_image_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_GUARD_S = 600  # generous: only catches a hang, it measures nothing


def _script(name, *args):
    return [sys.executable, os.path.join(ROOT, name), *map(str, args)]


def _signal_group_when(cmd, ready, signum, cwd):
    """Start cmd in its own process group, wait until ready(), send `signum` to the whole group.

    Returns (exit status, stdout + stderr); asserts every process of the group is gone.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_while_running(proc, ready, HANG_GUARD_S, 0.05)
        os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError('processes of the group outlived the command')
    return proc.returncode, out


def _train_cmd(outdir, data, *extra):
    return _script('train.py', f'--outdir={outdir}', f'--data={data}', '--device=cpu', '--batch=4', '--kimg=1',
                   '--cbase=256', '--cmax=16', '--map-depth=2', '--metrics=none', '--aug=noaug', '--workers=0',
                   '--snap=1000', '--tick=0.004', *extra)


def _interrupted_cleanly(code, out, expected):
    assert code == expected, out[-3000:]
    assert 'Traceback' not in out and 'Aborted!' not in out and 'Error' not in out, out[-3000:]
    assert [line for line in out.splitlines() if line.startswith('Interrupted')], out[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize('gpus', [1, 2])
def test_ctrl_c_on_train_exits_130_and_keeps_the_checkpoint(tmp_path, gpus):
    from torch_utils import checkpoint
    data = write_image_zip(str(tmp_path / 'data.zip'))
    outdir = tmp_path / 'runs'
    code, out = _signal_group_when(_train_cmd(outdir, data, f'--gpus={gpus}'),
                                   lambda: list(outdir.glob('*/training-state-*.pt')), signal.SIGINT, tmp_path)
    _interrupted_cleanly(code, out, EXIT_INTERRUPTED)
    (run_dir,) = outdir.iterdir()
    assert checkpoint.run_progress(str(run_dir), verify=True)['cur_nimg'] > 0  # the last checkpoint is whole
    assert not [n for n in os.listdir(run_dir) if n.endswith('.tmp')]


def _jpeg_folder(folder, count):
    import io
    import numpy as np
    import PIL.Image
    os.makedirs(folder)
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (1024, 1024, 3), np.uint8)).save(buf, 'jpeg')
    for i in range(count):
        with open(os.path.join(folder, f'{i}.jpg'), 'wb') as f:
            f.write(buf.getvalue() + f'copy {i}'.encode())  # distinct files, one decode cost each


def test_sigterm_on_the_dataset_tool_exits_75_and_leaves_nothing(tmp_path):
    src = tmp_path / 'src'
    _jpeg_folder(str(src), 120)
    state = TreeState(tmp_path)
    code, out = _signal_group_when(_script('dataset_tool.py', '--source', src, '--dest', 'out.zip', '--resolution',
                                           512, '--workers', 2),
                                   lambda: [n for n in os.listdir(tmp_path) if n.startswith('.')], signal.SIGTERM,
                                   tmp_path)
    _interrupted_cleanly(code, out, EXIT_PREEMPTED)
    state.assert_unchanged()


# ----------------------------------------------------------------------------
# Usage errors (2) and other failures (1), through the real scripts.


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('files')
    text = root / 'text.pkl'
    text.write_text('not a pickle')
    return dict(root=root, data=write_image_zip(str(root / 'data.zip')), text=str(text))


@pytest.mark.parametrize('case', ['train-bad-batch', 'train-missing-data', 'generate-no-seeds', 'calc-unknown-metric',
                                  'dataset-tool-bad-transform', 'generate-bad-pickle', 'calc-bad-pickle'])
def test_usage_errors_exit_2_and_failures_exit_1(files, tmp_path, case):
    d, t = files['data'], files['text']
    cases = {
        'train-bad-batch': (EXIT_USAGE, '--batch', _script('train.py', f'--outdir={tmp_path}', f'--data={d}',
                                                            '--batch=6', '--batch-gpu=4', '-n')),
        'train-missing-data': (EXIT_USAGE, '--data', _script('train.py', f'--outdir={tmp_path}',
                                                              f'--data={tmp_path / "none.zip"}', '-n')),
        'generate-no-seeds': (EXIT_USAGE, '--seeds', _script('generate.py', f'--network={t}',
                                                             f'--outdir={tmp_path / "o"}')),
        'calc-unknown-metric': (EXIT_USAGE, '--metrics', _script('calc_metrics.py', f'--network={t}',
                                                                 '--metrics=nosuch')),
        'dataset-tool-bad-transform': (EXIT_USAGE, '--width', _script('dataset_tool.py', '--source', files['root'],
                                                                      '--dest', tmp_path / 'o.zip', '--transform',
                                                                      'center-crop')),
        'generate-bad-pickle': (EXIT_FAILURE, t, _script('generate.py', f'--network={t}', '--seeds=0',
                                                         f'--outdir={tmp_path / "o"}', '--device=cpu')),
        'calc-bad-pickle': (EXIT_FAILURE, t, _script('calc_metrics.py', f'--network={t}', f'--data={d}',
                                                     '--device=cpu')),
    }
    code, needle, cmd = cases[case]
    state = TreeState(tmp_path)
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S)
    refused(res, code, needle, state=state)


# ----------------------------------------------------------------------------
# An error inside a spawned rank is one line, not that rank's traceback.


@pytest.mark.slow
def test_an_error_in_a_spawned_rank_is_one_line(tmp_path):
    good = write_image_zip(str(tmp_path / 'good.zip'))
    bad = tmp_path / 'bad.zip'
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, 'w') as dst:
        for i, name in enumerate(sorted(src.namelist())):
            # The first image is whole (the up-front check reads it); the others are not images.
            dst.writestr(name, src.read(name) if i == 0 else b'not a png')
    outdir = tmp_path / 'runs'
    res = subprocess.run(_train_cmd(outdir, bad, '--gpus=2'), cwd=tmp_path, capture_output=True, text=True,
                         timeout=HANG_GUARD_S, env=dict(os.environ, OMP_NUM_THREADS='1'))
    line = refused(res, EXIT_FAILURE, 'rank ', str(bad))
    assert 'cannot decode' in line, line
    with contextlib.suppress(FileNotFoundError):
        (run_dir,) = outdir.iterdir()
        assert json.load(open(run_dir / 'training_options.json'))['num_gpus'] == 2
