"""Bad files and bad output folders give one line naming the file or flag, a non-zero exit, and no
half-written output: generate.py, calc_metrics.py, `python -m schedulers plot` and legacy.py.

Most cases run the click commands in-process (fast); a few run the real scripts to check that stderr
is one line with no traceback. Read-only and full-disk cases mount a tiny tmpfs (skipped where mount
is not permitted); an in-process ENOSPC case covers them everywhere.
"""

import errno
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import generate
from cli_helpers import one_error_line as _one_error_line
import pickle_corpus
from metrics import detector
from patches import network_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOSED_PROXY = 'http://127.0.0.1:9'  # nothing listens there: every download fails at once


# ----------------------------------------------------------------------------
# Inputs.


@pytest.fixture(scope='module')
def bad_networks(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad-networks')
    good = pickle_corpus.snapshot_bytes()
    buf = io.BytesIO()
    torch.save({'G': torch.zeros(3)}, buf)
    files = {
        'text.pkl': (b'not a pickle, just some notes\n', 'not a pickle'),
        'truncated.pkl': (good[:len(good) // 3], 'ends early|not a valid network pickle'),
        'empty.pkl': (b'', 'empty'),
        'dataset.zip': (_zip_of_pngs([(16, 16)]), 'zip archive'),
        'torchsave.pkl': (buf.getvalue(), 'zip archive'),
    }
    out = {}
    for name, (data, pattern) in files.items():
        (root / name).write_bytes(data)
        out[name] = (os.fspath(root / name), pattern)
    return out


@pytest.fixture(scope='module')
def good_network(tmp_path_factory):
    path = tmp_path_factory.mktemp('good') / 'net.pkl'
    G = pickle_corpus.tiny_generator()
    network_pickle.save_network_pkl(os.fspath(path), dict(G=G, G_ema=G))
    return os.fspath(path)


def _zip_of_pngs(sizes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        for i, (w, h) in enumerate(sizes):
            png = io.BytesIO()
            PIL.Image.fromarray(np.full([h, w, 3], 100 + i, np.uint8)).save(png, format='PNG')
            z.writestr(f'{i:08d}.png', png.getvalue())
    return buf.getvalue()


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 KiB tmpfs (full after a few files); skips where mounting is not allowed."""
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    res = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', os.fspath(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip('cannot mount a tmpfs here (needs root)')
    try:
        yield mnt
    finally:
        subprocess.run(['umount', '-l', os.fspath(mnt)], check=False)


def _read_only(mnt):
    subprocess.run(['mount', '-o', 'remount,ro', os.fspath(mnt)], check=True)
    return mnt


def _run(command, args):
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    return result.exit_code, result.output


def _no_temp_files(folder):
    leftovers = [n for n in os.listdir(folder) if n.endswith('.tmp') or n.startswith('.')]
    assert not leftovers, leftovers


# ----------------------------------------------------------------------------
# generate.py


@pytest.mark.parametrize('name', ['text.pkl', 'truncated.pkl', 'empty.pkl', 'dataset.zip', 'torchsave.pkl'])
def test_generate_bad_network_file(bad_networks, tmp_path, name):
    path, pattern = bad_networks[name]
    code, out = _run(generate.main, ['--network', path, '--seeds', '0', '--outdir', os.fspath(tmp_path / 'out'),
                                     '--device', 'cpu'])
    line = _one_error_line(out, '--network', path)
    assert code != 0 and __import__('re').search(pattern, line), line
    assert not os.path.exists(tmp_path / 'out')  # a refused network leaves no empty --outdir behind


def test_generate_resume_name_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv('HTTPS_PROXY', CLOSED_PROXY)
    monkeypatch.setenv('https_proxy', CLOSED_PROXY)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(tmp_path / 'cache'))
    code, out = _run(generate.main, ['--network', 'ffhq512', '--seeds', '0', '--outdir', os.fspath(tmp_path / 'o'),
                                     '--device', 'cpu'])
    line = _one_error_line(out, '--network ffhq512', 'could not download')
    assert code != 0 and network_pickle.RESUME_SPECS['ffhq512'] in line
    assert not os.path.exists(tmp_path / 'cache' / 'downloads') or not os.listdir(tmp_path / 'cache' / 'downloads')


def test_generate_outdir_is_a_file(good_network, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    for outdir in (blocker, blocker / 'sub'):
        code, out = _run(generate.main, ['--network', good_network, '--seeds', '0', '--outdir', os.fspath(outdir),
                                         '--device', 'cpu'])
        assert code != 0
        _one_error_line(out, '--outdir', 'file')
    assert blocker.read_text() == 'x'


def test_generate_read_only_outdir(good_network, tmpfs):
    out_dir = _read_only(tmpfs)
    code, out = _run(generate.main, ['--network', good_network, '--seeds', '0', '--outdir', os.fspath(out_dir),
                                     '--device', 'cpu'])
    assert code != 0
    _one_error_line(out, '--outdir', 'read-only file system')


def test_generate_full_disk_leaves_only_complete_files(good_network, tmpfs):
    code, out = _run(generate.main, ['--network', good_network, '--seeds', '0-199', '--outdir', os.fspath(tmpfs),
                                     '--device', 'cpu'])
    assert code != 0
    _one_error_line(out, '--outdir', 'no space left on device')
    _no_temp_files(tmpfs)
    names = os.listdir(tmpfs)
    assert 0 < len(names) < 200
    for name in names:
        with PIL.Image.open(tmpfs / name) as img:
            img.load()  # every file that exists is a whole PNG


def test_generate_enospc_in_process(good_network, tmp_path, monkeypatch):
    """The same, without a tmpfs: the third PNG write fails with ENOSPC."""
    real_save, calls = PIL.Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            fp.write(b'\x89PNG partial')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, 'save', save)
    out_dir = tmp_path / 'out'
    code, out = _run(generate.main, ['--network', good_network, '--seeds', '0-5', '--outdir', os.fspath(out_dir),
                                     '--device', 'cpu'])
    assert code != 0
    _one_error_line(out, '--outdir', 'no space left on device')
    assert sorted(os.listdir(out_dir)) == ['seed0000.png', 'seed0001.png']


def test_generate_help_does_not_import_torch():
    code = ('import sys; sys.argv = ["generate.py", "--help"]; import runpy\n'
            'try:\n    runpy.run_path("generate.py", run_name="__main__")\nexcept SystemExit:\n    pass\n'
            'print("TORCH" if "torch" in sys.modules else "NO-TORCH")')
    for script in ('generate.py', 'calc_metrics.py', 'projector.py', 'style_mixing.py'):
        res = subprocess.run([sys.executable, '-c', code.replace('generate.py', script)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert 'Usage:' in res.stdout, (script, res.stdout[-300:], res.stderr[-300:])  # --help really ran
        assert res.stdout.strip().endswith('NO-TORCH'), (script, res.stdout[-300:], res.stderr[-300:])


def test_generate_real_script_prints_one_line(bad_networks, tmp_path):
    path, _ = bad_networks['text.pkl']
    res = subprocess.run([sys.executable, 'generate.py', '--network', path, '--seeds', '0', '--outdir',
                          os.fspath(tmp_path / 'o'), '--device', 'cpu'], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().count('\n') == 0 and res.stderr.startswith('Error: --network'), res.stderr


# ----------------------------------------------------------------------------
# calc_metrics.py


@pytest.fixture
def no_detector_download(monkeypatch):
    """Any attempt to fetch the detector fails the test (data errors must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError('the detector was requested before the data was checked')
    monkeypatch.setattr(detector, '_cached_or_download', refuse)
    monkeypatch.setattr(detector, 'resolve_detector', refuse)


@pytest.mark.parametrize('name', ['text.pkl', 'truncated.pkl', 'dataset.zip', 'torchsave.pkl'])
def test_calc_metrics_bad_network_file(bad_networks, name, no_detector_download):
    path, pattern = bad_networks[name]
    code, out = _run(calc_metrics.main, ['--network', path, '--device', 'cpu'])
    line = _one_error_line(out, '--network', path)
    assert code != 0 and __import__('re').search(pattern, line), line


@pytest.mark.parametrize('kind', ['empty-dir', 'empty-zip', 'non-square'])
def test_calc_metrics_bad_data_fails_before_the_detector(good_network, tmp_path, kind, no_detector_download):
    data = tmp_path / 'data'
    if kind == 'empty-dir':
        data.mkdir()
    elif kind == 'empty-zip':
        data = tmp_path / 'data.zip'
        data.write_bytes(_zip_of_pngs([]))
    else:
        data = tmp_path / 'data.zip'
        data.write_bytes(_zip_of_pngs([(16, 8), (16, 8)]))
    code, out = _run(calc_metrics.main, ['--network', good_network, '--data', os.fspath(data), '--device', 'cpu'])
    line = _one_error_line(out, '--data')
    assert code != 0
    assert {'empty-dir': 'no image files', 'empty-zip': 'no image files', 'non-square': '16x8'}[kind] in line


def test_calc_metrics_data_resolution_must_match_the_network(good_network, tmp_path, no_detector_download):
    data = tmp_path / 'data.zip'
    data.write_bytes(_zip_of_pngs([(32, 32)]))
    code, out = _run(calc_metrics.main, ['--network', good_network, '--data', os.fspath(data), '--device', 'cpu'])
    assert code != 0
    _one_error_line(out, '--data', 'resolution 16')


def test_calc_metrics_pickled_dataset_class_is_never_called(tmp_path, no_detector_download):
    sentinel = tmp_path / 'pwned'
    hubconf = tmp_path / 'hubconf.py'
    hubconf.write_text(f'open({os.fspath(sentinel)!r}, "w").write("ran")\ndef evil(**kwargs):\n    return 1\n')
    G = pickle_corpus.tiny_generator()
    path = tmp_path / 'net.pkl'
    network_pickle.save_network_pkl(os.fspath(path), dict(G=G, G_ema=G, training_set_kwargs=dict(
        class_name='torch.hub.load', repo_or_dir=os.fspath(tmp_path), model='evil', source='local')))
    code, out = _run(calc_metrics.main, ['--network', os.fspath(path), '--device', 'cpu'])
    assert code != 0
    _one_error_line(out, "names the dataset class 'torch.hub.load'", 'pass --data')
    assert not sentinel.exists()


def test_calc_metrics_resume_name_offline_is_one_line(tmp_path, monkeypatch, no_detector_download):
    monkeypatch.setenv('HTTPS_PROXY', CLOSED_PROXY)
    monkeypatch.setenv('https_proxy', CLOSED_PROXY)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(tmp_path / 'cache'))
    code, out = _run(calc_metrics.main, ['--network', 'ffhq512', '--device', 'cpu'])
    assert code != 0
    _one_error_line(out, '--network ffhq512', 'could not download')


def test_calc_metrics_real_script_prints_one_line(bad_networks):
    path, _ = bad_networks['truncated.pkl']
    res = subprocess.run([sys.executable, 'calc_metrics.py', '--network', path, '--device', 'cpu'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    err_lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith('Error: --network'), res.stderr


# ----------------------------------------------------------------------------
# python -m schedulers plot, legacy.py


def _plot(out):
    return subprocess.run([sys.executable, '-m', 'schedulers', 'plot', 'ddclr', 'exp1', '--kimg', '10',
                           '--points', '50', '--out', os.fspath(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _assert_plot_failed(res, *needles):
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_plot_out_under_a_file_or_a_directory(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    _assert_plot_failed(_plot(blocker / 'curves.png'), '--out', 'a file is in the way')
    _assert_plot_failed(_plot(tmp_path), '--out', os.fspath(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['file']


def test_plot_read_only_and_full_disk(tmpfs):
    (tmpfs / 'filler').write_bytes(os.urandom(60 * 1024))  # leaves less than one plot's worth of room
    _assert_plot_failed(_plot(tmpfs / 'curves.png'), f'--out: {tmpfs / "curves.png"}: no space left on device')
    assert sorted(os.listdir(tmpfs)) == ['filler']
    (tmpfs / 'filler').unlink()
    _read_only(tmpfs)
    # The line names the --out path itself, not an internal probe or temporary file.
    _assert_plot_failed(_plot(tmpfs / 'curves.png'), f'--out: {tmpfs / "curves.png"}: read-only file system')


def test_legacy_cli_is_one_line():
    res = subprocess.run([sys.executable, 'legacy.py', '--source', 'x.pkl', '--dest', 'y.pkl'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().count('\n') == 0 and 'not supported' in res.stderr
    assert not os.path.exists(os.path.join(ROOT, 'y.pkl'))


# ----------------------------------------------------------------------------
# The shared helpers in dnnlib.util.


def test_os_error_line_and_ensure_output_dir(tmp_path):
    from dnnlib import util
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/x/y.png')
    assert util.os_error_line(err, '--outdir') == '--outdir: /x/y.png: no space left on device'
    assert util.os_error_line(OSError(errno.EIO, 'Input/output error')) == 'Input/output error'
    blocker = tmp_path / 'f'
    blocker.write_text('x')
    for path in (blocker, blocker / 'sub'):
        with pytest.raises(OSError) as info:
            util.ensure_output_dir(path)
        assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    made = util.ensure_output_dir(tmp_path / 'a' / 'b')
    assert os.path.isdir(made) and os.listdir(made) == []


def test_atomic_writes_get_umask_permissions(tmp_path):
    from dnnlib import util
    old = os.umask(0o022)
    try:
        util.atomic_write_bytes(tmp_path / 'x.bin', b'1')
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / 'x.bin').st_mode & 0o777) == 0o644
