"""The FID pipeline is lean on an accelerator, keeps its values, and its math is exact.

- Frechet distance in torch float64 against scipy's sqrtm and exact low-rank references.
- The generated-image feature loop: no host reads and no host-data tensors per batch, counted (not
  timed) on the `meta` device (a stand-in for a GPU: reading a meta tensor back raises) and on the CPU
  with a TorchFunctionMode that sees .cpu()/.numpy()/.item()/float() by name; the counts must not grow
  with the number of batches.
- Results do not depend on the generation batch size; the CUDA overlap's ordering, with fake streams.
"""

import os

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics import detector as detector_lib
from metrics import frechet_inception_distance as fid_lib
from metrics import metric_main, metric_utils
from test_augment_counters import _Calls, _Ops

import test_metrics_e2e as e2e

# ----------------------------------------------------------------------------
# Frechet distance: torch float64 against references.


def _random_psd(rng, d, rank=None):
    a = rng.standard_normal((rank or d, d))
    return a.T @ a / (rank or d)


def _sqrtm_trace(s1, s2):
    return float(np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2))))


@pytest.mark.parametrize('d', [8, 64, 200])
def test_trace_sqrt_product_matches_scipy_sqrtm_full_rank(d):
    rng = np.random.default_rng(d)
    s1, s2 = _random_psd(rng, d) + 0.05 * np.eye(d), _random_psd(rng, d) * 3
    got = fid_lib.trace_sqrt_product(fid_lib.psd_factor(torch.from_numpy(s1)), torch.from_numpy(s2))
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_sqrtm_trace(s1, s2), rel=1e-11)


@pytest.mark.parametrize('m1, m2', [(10, None), (None, 10), (10, 25), (3, 3)])
def test_trace_sqrt_product_rank_deficient_matches_exact_low_rank_form(m1, m2):
    """Covariances of fewer samples than dimensions; the reference is the nuclear norm of B A^T.

    With S1 = A^T A and S2 = B^T B, the non-zero eigenvalues of S1 S2 are the squared singular values
    of B A^T, so Tr (S1 S2)^1/2 = sum svd(B A^T): small, well-conditioned, independent of eigh.
    """
    rng = np.random.default_rng(7)
    d = 64
    a = rng.standard_normal((m1 or d, d)) / np.sqrt(m1 or d)
    b = rng.standard_normal((m2 or d, d)) / np.sqrt(m2 or d) + 0.3
    s1, s2 = a.T @ a, b.T @ b
    exact = scipy.linalg.svdvals(b @ a.T).sum()
    got = float(fid_lib.trace_sqrt_product(fid_lib.psd_factor(torch.from_numpy(s1)), torch.from_numpy(s2)))
    # Clamped rounding-level eigenvalues (~1e-16) contribute square roots of ~1e-8 each.
    assert got == pytest.approx(exact, rel=1e-6)
    assert _sqrtm_trace(s1, s2) == pytest.approx(exact, rel=1e-5)   # scipy: the upstream formulation


def test_frechet_distance_runs_on_the_tensors_device_in_float64():
    rng = np.random.default_rng(3)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d, rank=12)
    as_float32 = [torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)]
    got = fid_lib.frechet_distance(*as_float32)    # promoted to float64, not computed in float32
    assert got == fid_lib.frechet_distance(*[a.double() for a in as_float32])
    want = fid_lib.frechet_distance(*[a.double().numpy() for a in as_float32], method='sqrtm')
    assert got == pytest.approx(want, rel=1e-6)  # s2 has rank 12 of 32: sqrtm's own error dominates
    t = fid_lib.frechet_distance_torch(*[torch.from_numpy(a) for a in (mu1, s1, mu2, s2)])
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.ndim == 0
    assert float(t) == pytest.approx(fid_lib.frechet_distance(mu1, s1, mu2, s2), rel=1e-14)


def test_fid_of_the_pipeline_equals_scipy_reference(tmp_path, e2e_cache):
    """calc_metric's FID against upstream's numpy/scipy formulation on the same statistics."""
    images = e2e._write_images(tmp_path / 'reals.npy')
    det = e2e.ToyDetector()
    kwargs = e2e._toy_kwargs(tmp_path / 'reals.npy')
    res = metric_main.calc_metric('fid50k_full', e2e.ReplayGenerator(images), kwargs, device='cpu', detector=det,
                                  num_gen=24)
    feats = det.features(torch.from_numpy(images)).double().numpy()
    gen = feats[np.arange(24) % len(feats)]
    want = fid_lib.frechet_distance(gen.mean(0), np.cov(gen, rowvar=False, bias=True), feats.mean(0),
                                    np.cov(feats, rowvar=False, bias=True), method='sqrtm')
    assert res.results.fid24_full == pytest.approx(want, rel=1e-9)

# ----------------------------------------------------------------------------
# Components for the feature loop.


class _TinyFeatures(torch.nn.Module):
    """A features-only network like fid-helper's: float [N, 3, 299, 299] -> [N, 8]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class _FlagRecorder(torch.nn.Module):
    """Records the TF32 switches in force when the detector network runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, return_features=False, no_output_bias=False):
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return x.float().mean(dim=(2, 3))


def _features_detector(device):
    """The Detector wrapper (uint8 check, TF1 resize to 299, normalisation) around _TinyFeatures."""
    torch.manual_seed(0)
    module = _TinyFeatures().eval().requires_grad_(False).to(device)  # (TorchScript modules cannot go to meta)
    return detector_lib.Detector(module, 'tiny', __file__, 'features-only', device)


def _generator(c_dim=0, device='cpu'):
    networks = pytest.importorskip('training.networks')
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None))
    return metric_utils.prepare_generator(G, device)


def _opts(tmp_path, G, device, seed=None, batch_size=4):
    e2e._write_images(tmp_path / 'reals.npy', n=12)  # the labels' dataset
    kwargs = dict(e2e._toy_kwargs(tmp_path / 'reals.npy'), use_labels=G.c_dim > 0)
    return metric_utils.MetricOptions(G=G, dataset_kwargs=kwargs, device=device, seed=seed, batch_size=batch_size)


def _run(opts, det, num_gen, **kwargs):
    """compute_feature_stats_for_generator under both counters."""
    with _Calls() as calls, _Ops() as ops:
        stats = metric_utils.compute_feature_stats_for_generator(opts, det, max_items=num_gen, capture_mean_cov=True,
                                                                 capture_all=True, **kwargs)
    return calls, ops, stats

# ----------------------------------------------------------------------------
# The feature loop never reads the device back per batch.


@pytest.mark.parametrize('c_dim', [0, 2])
def test_generated_feature_loop_on_meta_is_constant_in_the_number_of_batches(tmp_path, c_dim):
    """On `meta` any read-back raises; host-data tensors and host-to-device ops are a constant total."""
    G = _generator(c_dim, device='meta')
    det = _features_detector('meta')
    opts = _opts(tmp_path, G, 'meta')
    _run(opts, det, 4)  # warm-up: the detector's resize constants are built once per device
    runs = {n: _run(opts, det, n) for n in (8, 40)}      # 2 and 10 generator/detector batches
    (calls_a, ops_a, stats_a), (calls_b, ops_b, stats_b) = runs[8], runs[40]
    assert calls_b.host_copies == calls_a.host_copies and ops_b.host_inputs == ops_a.host_inputs
    assert calls_a.host_copies == []
    assert ops_a.host_inputs == (['lift_fresh', '_to_copy'] if c_dim else [])  # the labels' one transfer
    assert calls_a.host_reads == calls_b.host_reads == [] and ops_a.syncs == ops_b.syncs == []
    assert stats_b.num_items == 40 and stats_b.raw_cov.device.type == 'meta'
    assert stats_b.get_all_torch().device.type == 'meta'


def _host_reads(opts, det, num_gen):
    calls, ops, stats = _run(opts, det, num_gen)
    assert stats.num_items == num_gen
    return calls.host_reads + calls.host_copies + ops.syncs


def _cpu_reads_for(tmp_path, batch_counts, wrap=None):
    """Host reads/copies/syncs of the CPU feature loop for each number of 4-image batches."""
    G = _generator()
    det = _features_detector('cpu')
    if wrap is not None:
        det.features = wrap(det.features)
    opts = _opts(tmp_path, G, 'cpu', seed=0)
    _host_reads(opts, det, 4)  # warm-up
    return [_host_reads(opts, det, 4 * n) for n in batch_counts]


def test_generated_feature_loop_on_cpu_reads_nothing_per_batch(tmp_path):
    """On the CPU the counter sees .cpu()/.numpy()/.item()/float() by name: the same total for 2 and 6 batches."""
    few, many = _cpu_reads_for(tmp_path, [2, 6])
    assert many == few and len(few) <= 2, (few, many)


def test_the_cpu_counter_catches_a_per_batch_transfer(tmp_path):
    """The check above fails when a .cpu() per batch is added (here: to every detector call)."""
    few, many = _cpu_reads_for(tmp_path, [2, 6], wrap=lambda features: lambda images: features(images).cpu())
    assert len(many) - len(few) == 4 and many.count('cpu') == 6, (few, many)


def test_real_feature_loop_on_meta_copies_each_batch_once(tmp_path):
    """Real images come from the host: one host-to-device copy per batch, and no reads back per batch.

    (The DataLoader reads one CPU scalar per pass for its worker seed: a constant, not per batch.)
    """
    det = _features_detector('meta')
    det.features(torch.zeros([1, 3, 8, 8], dtype=torch.uint8, device='meta'))  # warm-up

    def run(n):
        e2e._write_images(tmp_path / f'reals{n}.npy', n=n)
        opts = metric_utils.MetricOptions(dataset_kwargs=e2e._toy_kwargs(tmp_path / f'reals{n}.npy'), device='meta',
                                          cache=False, batch_size=4)
        with _Calls() as calls, _Ops() as ops:
            stats = metric_utils.compute_feature_stats_for_dataset(opts, det, capture_mean_cov=True, capture_all=True)
        assert stats.num_items == n and stats.raw_cov.device.type == 'meta'
        to_device = [name for name in ops.host_inputs if name in ('_to_copy', 'copy_')]
        return to_device, calls.host_reads + ops.syncs
    (copies_a, reads_a), (copies_b, reads_b) = run(8), run(24)
    assert copies_a == ['_to_copy'] * 2 and copies_b == ['_to_copy'] * 6
    assert reads_a == reads_b and len(reads_a) <= 2, reads_a


def test_bootstrap_transfers_are_constant_in_the_number_of_replicates():
    rng = np.random.default_rng(0)
    x, mu_r, s_r = torch.from_numpy(rng.standard_normal((30, 6))), rng.standard_normal(6), np.eye(6)

    def reads(replicates):
        counts = fid_lib.bootstrap_counts(30, replicates)
        with _Calls() as calls:
            fid_lib.bootstrap_values(x, mu_r, s_r, counts)
        return calls.host_reads + calls.host_copies
    assert reads(2) == reads(7)

# ----------------------------------------------------------------------------
# Values do not depend on batching; the overlap's ordering.


def test_latent_stream_does_not_depend_on_the_batch_split(tmp_path):
    G = _generator(c_dim=2)
    opts = _opts(tmp_path, G, 'cpu', seed=5)

    def drawn(sizes):
        stream = metric_utils.LatentStream(opts, G, sum(sizes))
        parts = [stream.take(k) for k in sizes]
        return torch.cat([z for z, _ in parts]), torch.cat([c for _, c in parts])
    z_a, c_a = drawn([150])
    for sizes in ([7, 64, 1, 78], [64, 64, 22], [100, 50]):
        z_b, c_b = drawn(sizes)
        assert torch.equal(z_a, z_b) and torch.equal(c_a, c_b)
    # The stream draws z 64 rows at a time: the G calls of 64 images before it drew exactly these.
    gen = opts.torch_generator(salt=1)
    direct = torch.cat([torch.randn([k, 16], generator=gen) for k in (64, 64, 22)])
    assert torch.equal(z_a, direct)
    assert c_a.shape == (150, 2) and set(c_a.argmax(dim=1).tolist()) == {0, 1}


def test_generated_statistics_do_not_depend_on_batch_gen(tmp_path):
    G = _generator()
    det = _features_detector('cpu')
    opts = _opts(tmp_path, G, 'cpu', seed=1)
    runs = [metric_utils.compute_feature_stats_for_generator(opts, det, max_items=18, batch_gen=bg,
                                                             capture_mean_cov=True, capture_all=True)
            for bg in (4, 8, 64)]
    for other in runs[1:]:
        torch.testing.assert_close(other.get_all_torch(), runs[0].get_all_torch(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(other.raw_cov, runs[0].raw_cov, rtol=1e-6, atol=1e-9)
    assert runs[0].num_items == 18 and runs[0].raw_cov.dtype == torch.float64


def test_choose_batch_gen_keeps_the_detector_batch_on_cpus():
    G = _generator()
    assert metric_utils.choose_batch_gen(G, 'cpu', 64) == 64
    assert metric_utils.choose_batch_gen(G, 'meta', 16) == 16


class _FakeStreams:
    """Records the order of launches and hand-overs that SideStream would issue on CUDA."""

    def __init__(self, log):
        self.log = log

    def launch(self, fn):
        out = fn()
        self.log.append(('launch', int(out[0])))
        return out

    def hand_over(self, t):
        self.log.append(('hand_over', int(t[0])))
        return t


def test_overlap_launches_the_next_batch_before_the_current_one_is_used():
    log = []
    made = iter(range(10))
    make = lambda k: torch.full([k], float(next(made)))  # noqa: E731
    for batch in metric_utils.overlapped(make, [3, 3, 2], _FakeStreams(log)):
        log.append(('use', int(batch[0])))
    assert log == [('launch', 0), ('hand_over', 0), ('launch', 1), ('use', 0), ('hand_over', 1), ('launch', 2),
                   ('use', 1), ('hand_over', 2), ('use', 2)]
    plain = list(metric_utils.overlapped(lambda k: torch.arange(k), [3, 1]))
    assert [b.tolist() for b in plain] == [[0, 1, 2], [0]]

# ----------------------------------------------------------------------------
# Detector math stays upstream's.


def test_detector_runs_with_tf32_off_and_restores_the_switches():
    recorder = _FlagRecorder()
    det = detector_lib.Detector(recorder, 'recorder', __file__, 'nvidia', 'cpu')
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # e.g. train.py --allow-tf32
        det.features(torch.zeros([2, 3, 4, 4], dtype=torch.uint8))
        det.probabilities(torch.zeros([2, 3, 4, 4], dtype=torch.uint8))
        assert recorder.seen == [(False, False)] * 2
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_generated_images_reach_the_detector_as_uint8_quantised(tmp_path):
    """The loop hands the detector exactly quantize_images(G(z, c)) of the stream's z."""
    seen = []

    class Recorder:
        def features(self, images):
            seen.append(images)
            return images.flatten(1)[:, :5].float()
    G = _generator()
    opts = _opts(tmp_path, G, 'cpu', seed=2)
    metric_utils.compute_feature_stats_for_generator(opts, Recorder(), max_items=6, capture_mean_cov=True)
    z, c = metric_utils.LatentStream(opts, G, 6).take(6)
    with torch.no_grad():
        want = metric_utils.quantize_images(G(z=z, c=c))
    assert all(b.dtype == torch.uint8 for b in seen) and torch.equal(torch.cat(seen), want)

# ----------------------------------------------------------------------------
# On a GPU.


def _sync_warnings(fn):
    import warnings
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            fn()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    return [str(w.message) for w in caught if 'synchroniz' in str(w.message)]


@pytest.mark.gpu
def test_cuda_feature_loop_syncs_a_constant_number_of_times(tmp_path):
    G = _generator(c_dim=2, device='cuda')
    det = _features_detector('cuda')
    opts = _opts(tmp_path, G, 'cuda', seed=0)

    def run(n):
        return lambda: metric_utils.compute_feature_stats_for_generator(opts, det, max_items=n, batch_gen=8,
                                                                        capture_mean_cov=True, capture_all=True)
    run(8)()
    few, many = _sync_warnings(run(16)), _sync_warnings(run(96))
    assert len(many) == len(few), (few, many)


@pytest.mark.gpu
def test_cuda_overlapped_loop_equals_the_plain_loop(tmp_path, monkeypatch):
    G = _generator(device='cuda')
    det = _features_detector('cuda')
    opts = _opts(tmp_path, G, 'cuda', seed=3)

    def stats():
        return metric_utils.compute_feature_stats_for_generator(opts, det, max_items=40, batch_gen=16,
                                                                capture_mean_cov=True, capture_all=True)
    overlapped = stats()
    monkeypatch.setattr(metric_utils, 'SideStream', lambda device: None)
    plain = stats()
    assert torch.equal(overlapped.get_all_torch(), plain.get_all_torch())
    assert torch.equal(overlapped.raw_cov, plain.raw_cov)


@pytest.mark.gpu
def test_cuda_frechet_distance_equals_cpu():
    rng = np.random.default_rng(9)
    d = 256
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d, rank=100)
    on_gpu = fid_lib.frechet_distance(*[torch.from_numpy(a).cuda() for a in (mu1, s1, mu2, s2)])
    assert on_gpu == pytest.approx(fid_lib.frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


@pytest.fixture
def e2e_cache(tmp_path, monkeypatch):
    from dnnlib import util
    monkeypatch.setattr(util, '_cache_dir_override', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(tmp_path / 'cache'))
