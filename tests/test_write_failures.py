"""Full and read-only disks met by calc_metrics.py, the metric cache and the study builder: one line
naming the file, nothing half-written, and an optional cache never stops a metric.

Full and read-only disks are small tmpfs mounts (root only; skipped with the reason elsewhere).
"""

import os
import shutil
import subprocess

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dnnlib
import pickle_corpus
from cli_helpers import EXIT_FAILURE, TreeState, refused
from metrics import metric_main
from patches import network_pickle
from test_metrics_e2e import ReplayGenerator, ToyDetector, _toy_kwargs, _write_images


@pytest.fixture
def mount(tmp_path):
    """mount(size, read_only=False) -> a fresh tmpfs folder; all are unmounted afterwards."""
    mounted = []

    def make(size, read_only=False):
        mnt = tmp_path / f'mnt{len(mounted)}'
        mnt.mkdir()
        res = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mnt)], capture_output=True)
        if res.returncode:
            pytest.skip(f'cannot mount a tmpfs here ({res.stderr.decode().strip() or "needs root"})')
        mounted.append(mnt)
        if read_only:
            subprocess.run(['mount', '-o', 'remount,ro', str(mnt)], check=True)
        return mnt
    yield make
    for mnt in mounted:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def _fill(folder):
    """Write a filler file until the disk is full."""
    fd = os.open(os.path.join(folder, 'filler'), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b'\0' * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# calc_metrics.py: the result line cannot be appended.


def test_calc_metrics_full_disk_names_the_metric_file_and_leaves_no_empty_file(tmp_path, mount, monkeypatch):
    import calc_metrics
    run_dir = mount('1m')
    snapshot = os.path.join(run_dir, 'network-snapshot-000004.pkl')
    G = pickle_corpus.tiny_generator()
    network_pickle.save_network_pkl(snapshot, dict(G=G, G_ema=G))
    dnnlib.util.atomic_write_text(os.path.join(run_dir, 'training_options.json'), '{}')
    data = tmp_path / 'data'
    data.mkdir()
    for i in range(2):
        PIL.Image.fromarray(np.full([16, 16, 3], 60 * i, np.uint8)).save(data / f'{i}.png')
    _fill(run_dir)
    # The metric's value is not under test (the write is): a fixed result, as calc_metric returns it.
    result = dnnlib.EasyDict(results=dnnlib.EasyDict(fid2_full=1.5), metric='fid50k_full', total_time=0.1,
                             total_time_str='0s', num_gpus=1, detector=None, num_gen=2)
    monkeypatch.setattr(metric_main, 'calc_metric', lambda **_kwargs: result)
    state = TreeState(run_dir)
    res = CliRunner().invoke(calc_metrics.main, ['--network', snapshot, '--data', str(data), '--device', 'cpu',
                                                 '--num-gen', '2'])
    path = os.path.join(run_dir, 'metric-fid50k_full.jsonl')
    refused(res, EXIT_FAILURE, path, 'no space left on device', state=state)
    assert '"fid2_full": 1.5' in res.output  # the computed value is still shown


# ----------------------------------------------------------------------------
# The metric cache is optional.


@pytest.mark.parametrize('kind', ['read-only', 'full'])
def test_unwritable_metric_cache_warns_once_and_the_metric_runs(tmp_path, mount, monkeypatch, capsys, kind):
    from metrics import metric_utils
    cache = mount('64k', read_only=kind == 'read-only')
    if kind == 'full':
        os.makedirs(cache / 'gan-metrics')
        _fill(cache / 'gan-metrics')
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(cache))
    monkeypatch.setattr(metric_utils, '_cache_warned', set())
    state = TreeState(cache)
    values = []
    for seed in (0, 1):  # two datasets: two cache files in the same folder, one warning
        images = _write_images(tmp_path / f'reals{seed}.npy', seed=seed)
        res = metric_main.calc_metric('fid50k_full', ReplayGenerator(images), _toy_kwargs(tmp_path / f'reals{seed}.npy'),
                                      device='cpu', detector=ToyDetector(), num_gen=len(images))
        values.append(res.results.fid40_full)
    assert all(abs(v) < 1e-9 for v in values)  # computed without the cache: the replayed reals give FID 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if 'cache' in line]
    assert len(warnings) == 1 and str(cache / 'gan-metrics') in warnings[0], warnings
    state.assert_unchanged()  # no partial cache file


# ----------------------------------------------------------------------------
# celebamask: a read-only --dest is refused before the decode pass.


def test_celebamask_read_only_dest_is_refused_before_decoding(tmp_path, mount):
    import dataset_tool
    img = tmp_path / 'celeba' / 'CelebA-HQ-img'
    img.mkdir(parents=True)
    for i in range(4):
        PIL.Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(img / f'{i}.png')
    dest = mount('64k', read_only=True) / 'study'
    res = CliRunner().invoke(dataset_tool.main, ['celebamask', '--celeba-dir', str(tmp_path / 'celeba'), '--dest',
                                                 str(dest), '--num-subsets', '1', '--subset-size', '4',
                                                 '--num-generated', '0', '--resolution', '8', '--workers', '1'])
    refused(res, EXIT_FAILURE, '--dest', str(dest), 'read-only file system', state=TreeState(dest.parent))
    assert 'Checking every image' not in res.output


def test_celebamask_full_disk_is_one_line_without_zip_noise(tmp_path, mount):
    """The real script (the interpreter's own 'Exception ignored' messages would show there)."""
    import sys
    img = tmp_path / 'celeba' / 'CelebA-HQ-img'
    img.mkdir(parents=True)
    for i in range(6):
        PIL.Image.fromarray(np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(img / f'{i}.png')
    disk = mount('72k')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, 'dataset_tool.py'), 'celebamask', '--celeba-dir',
                          str(tmp_path / 'celeba'), '--dest', str(disk / 'study'), '--num-subsets', '2',
                          '--subset-size', '3', '--num-generated', '0', '--resolution', '64', '--workers', '1'],
                         capture_output=True, text=True, timeout=300)
    refused(res, EXIT_FAILURE, '--dest', str(disk / 'study'), 'no space left on device', state=TreeState(disk))
    shutil.rmtree(tmp_path / 'celeba')
