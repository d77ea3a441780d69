"""dataset_tool.py under a real Ctrl-C (SIGINT to the whole process group, as a terminal sends it),
and with destinations it cannot write: a file where a folder should be, a read-only or full disk."""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from tests.cli_helpers import wait_while_running
from tests.dataset_tool_helpers import run as _run
from dataset_build import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_GUARD_S = 120  # generous: only catches a hang, it measures nothing


def _photo_jpeg(side, seed):
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([xx, yy, 1 - xx], axis=-1) * 200 + 25
    img = base + np.random.RandomState(seed).normal(0, 4, size=base.shape)
    buf = io.BytesIO()
    PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format='jpeg', quality=90)
    return buf.getvalue()


def _jpeg_folder(folder, count, side=1024):
    """`count` distinct 1024x1024 JPEGs, cheaply: one encoded image, each copy with its own trailing
    comment bytes after the end marker (decoders ignore them; the files' hashes differ)."""
    os.makedirs(folder)
    data = _photo_jpeg(side, 0)
    for i in range(count):
        with open(os.path.join(folder, f'{i}.jpg'), 'wb') as f:
            f.write(data + f'copy {i}'.encode())


def _group_gone(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _interrupt(args, ready, tmp_path, times=1):
    """Start dataset_tool.py in its own process group, wait until `ready()`, send SIGINT to the group
    (`times` times, 50 ms apart: an impatient user presses Ctrl-C again).

    Returns (exit status, stderr lines); asserts the tool and its workers are gone.
    """
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), *map(str, args)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_while_running(proc, ready, HANG_GUARD_S, 0.02)
        for i in range(times):
            with contextlib.suppress(ProcessLookupError):  # it may be gone already
                os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.05 if i + 1 < times else 0)
        _out, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + HANG_GUARD_S
    while not _group_gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_gone(proc.pid), 'worker processes outlived the tool'
    return proc.returncode, err.strip().splitlines()


def _hidden(folder):
    return [n for n in os.listdir(folder) if n.startswith('.')]


@pytest.mark.parametrize('dest_name', ['out', 'out.zip'])
def test_ctrl_c_during_conversion(tmp_path, dest_name):
    src = str(tmp_path / 'src')
    _jpeg_folder(src, 120)
    code, err = _interrupt(['--source', src, '--dest', dest_name, '--resolution', 512, '--workers', 2],
                           lambda: _hidden(tmp_path), tmp_path)
    assert code == 130 and len(err) == 1 and err[0].startswith('Interrupted'), '\n'.join(err)
    assert sorted(os.listdir(tmp_path)) == ['src'], 'temporary or partial output left behind'


def test_ctrl_c_during_celebamask_leaves_dest_as_it_was(tmp_path):
    _jpeg_folder(str(tmp_path / 'celeba' / 'CelebA-HQ-img'), 100)
    _jpeg_folder(str(tmp_path / 'gen'), 20, side=512)
    dest = tmp_path / 'study'
    dest.mkdir()
    (dest / 'mine.txt').write_text('kept')

    def converting():  # the staging folder already holds zips: sets are being written
        return any(n.endswith('.zip') for s in _hidden(dest) for n in os.listdir(dest / s))

    code, err = _interrupt(['celebamask', '--celeba-dir', tmp_path / 'celeba', '--generated-dir', tmp_path / 'gen',
                            '--dest', dest, '--num-subsets', 2, '--subset-size', 45, '--num-generated', 10,
                            '--resolution', 512, '--workers', 2], converting, tmp_path, times=2)
    assert code == 130 and len(err) == 1 and err[0].startswith('Interrupted'), '\n'.join(err)
    assert os.listdir(dest) == ['mine.txt'] and (dest / 'mine.txt').read_text() == 'kept'
    assert sorted(os.listdir(tmp_path)) == ['celeba', 'gen', 'study']


def test_ctrl_c_during_verify(tmp_path):
    img = tmp_path / 'celeba' / 'CelebA-HQ-img'
    img.mkdir(parents=True)
    for i in range(4):
        PIL.Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(img / f'{i}.png')
    r = CliRunner().invoke(dataset_tool.main, ['celebamask', '--celeba-dir', str(tmp_path / 'celeba'), '--dest',
                                               str(tmp_path / 'o'), '--num-subsets', '1', '--subset-size', '4',
                                               '--num-generated', '0', '--resolution', '8', '--workers', '1'])
    assert r.exit_code == 0, r.output
    for i in range(4):  # sparse 8 GiB sources (no disk used): hashing them keeps both workers busy for seconds
        os.truncate(img / f'{i}.png', 8 << 30)
    started = time.monotonic()
    code, err = _interrupt(['verify', tmp_path / 'o' / 'CelebAMask-HQ1.manifest.json'],
                           lambda: time.monotonic() - started > 1.0, tmp_path)
    assert code == 130 and len(err) == 1 and err[0].startswith('Interrupted'), '\n'.join(err)


# ----------------------------------------------------------------------------
# Destinations that cannot be written: one line, non-zero exit, nothing left behind.


@pytest.fixture
def small_src(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    for i in range(6):
        PIL.Image.fromarray(np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f'{i}.png')
    return src


def _one_error_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith('Error: '), result.output
    assert 'Traceback' not in result.output
    return lines[-1]


def test_file_where_a_folder_should_be(tmp_path, small_src):
    blocker = tmp_path / 'afile'
    blocker.write_text('x')
    line = _one_error_line(_run('--source', small_src, '--dest', blocker / 'out.zip'))
    assert str(blocker / 'out.zip') in line and 'not a folder' in line
    line = _one_error_line(_run('--source', small_src, '--dest', blocker / 'sub' / 'out'))
    assert 'not a folder' in line
    line = _one_error_line(_run('celebamask', '--celeba-dir', small_src, '--dest', blocker, '--num-subsets', 1,
                                '--subset-size', 2, '--num-generated', 0, '--resolution', 64))
    assert str(blocker) in line and 'not a folder' in line
    line = _one_error_line(_run('celebamask', '--celeba-dir', small_src, '--dest', blocker / 'study',
                                '--num-subsets', 1, '--subset-size', 2, '--num-generated', 0, '--resolution', 64))
    assert 'not a folder' in line
    assert blocker.read_text() == 'x'


@contextlib.contextmanager
def _tmpfs(path, size):
    path.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip('mounting a tmpfs is not permitted here')
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=False)


@pytest.mark.parametrize('dest', ['out.zip', 'out'])
def test_disk_full_during_write(tmp_path, small_src, dest):
    with _tmpfs(tmp_path / 'small', '64k') as disk:
        line = _one_error_line(_run('--source', small_src, '--dest', disk / dest, '--workers', 1))
        assert str(disk / dest) in line and 'no space left' in line
        assert os.listdir(disk) == [], 'partial output left on the full disk'


def test_disk_full_during_celebamask(tmp_path, small_src):
    with _tmpfs(tmp_path / 'small', '64k') as disk:
        line = _one_error_line(_run('celebamask', '--celeba-dir', small_src, '--dest', disk / 'study',
                                    '--num-subsets', 2, '--subset-size', 3, '--num-generated', 0,
                                    '--resolution', 64, '--workers', 1))
        assert 'no space left' in line and os.listdir(disk) == []


def test_read_only_destination(tmp_path, small_src):
    with _tmpfs(tmp_path / 'ro', '1m') as disk:
        subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
        line = _one_error_line(_run('--source', small_src, '--dest', disk / 'out.zip'))
        assert 'read-only' in line
        line = _one_error_line(_run('celebamask', '--celeba-dir', small_src, '--dest', disk / 'study',
                                    '--num-subsets', 1, '--subset-size', 2, '--num-generated', 0, '--resolution', 64))
        assert 'read-only' in line


def test_interrupts_deferred_holds_ctrl_c_until_the_block_ends():
    done, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with parallel.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # delivered at once, held by the block
            done.append('renames finished')
    assert done == ['renames finished']
    assert signal.getsignal(signal.SIGINT) is before
