"""Throughput of the metric pipeline: generation, feature extraction, and one whole metric.

Prints images/second for
  - generation + uint8 quantisation with our batching (metric_utils.choose_batch_gen images per G call)
    against the upstream baseline of 4 images per G call, measured in the same run (the ratio is the
    speed-up);
  - detector feature extraction (resize to 299 + Inception) on uint8 images;
  - the generated-image feature loop (generation + detector + float64 statistics) as the metrics run
    it, compute_feature_stats_for_generator (big G calls, overlapped with the detector on CUDA, no host
    sync per batch), against an upstream-style loop in the same run (4 images per G call, features
    copied to the host and summed there after every detector batch), over --loop-images images;
  - FID's bootstrap interval on --num-gen synthetic 2048-d features, against the time the detector
    needs to extract that many features (the ratio is the interval's extra cost);
  - the Inception-space metrics (prdc, memo, pull) on --num-gen x --nn-real synthetic 2048-d features
    (20% of the real rows marked generated), against the time the detector needs to extract that many
    features (the ratio is their extra cost at study scale: 50k against 1,000 to 70,000);
and the total time of one metric (default fid50k_full) at the given resolution and --num-gen,
against a synthetic real set of --num-real random images (real statistics included, cache off), then
prdc50k_full, memo50k_full and pull50k_full from the same feature pass, against that first metric's
time (feature pass included).

Examples:
    python benchmarks/bench_metrics.py --device cuda --resolution 256 --num-gen 5000
    python benchmarks/bench_metrics.py --device cpu --resolution 32 --num-gen 64 --num-real 64 --cbase 2048
"""

import os
import sys
import tempfile
import time
import zipfile

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metrics import (feature_space, frechet_inception_distance, memorisation, metric_main, metric_utils,  # noqa: E402
                     prdc, pull)
from metrics.detector import resolve_detector  # noqa: E402


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _rate(fn, n_images, device, repeats):
    fn()  # warm-up (cudnn autotune, lazy init)
    return n_images * repeats / _timed(lambda: [fn() for _ in range(repeats)], device)


def _make_generator(network, resolution, cbase, device):
    if network:
        from patches.network_pickle import load_network_pkl
        return load_network_pkl(network)['G_ema'].eval().requires_grad_(False).to(device)
    from training.networks import Generator
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=cbase, channel_max=512, num_fp16_res=4, conv_clamp=256))
    return G.eval().requires_grad_(False).to(device)


def _make_real_zip(path, n, resolution):
    """n random images; every fifth is marked generated in dataset.json (the part labels pull needs)."""
    import json
    from PIL import Image
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, 'w') as z:
        for i in range(n):
            img = rng.integers(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
            with z.open(f'{i:06d}.png', 'w') as f:
                Image.fromarray(img).save(f, format='PNG')
        z.writestr('dataset.json', json.dumps(dict(labels=None, generated=[f'{i:06d}.png' for i in range(0, n, 5)])))


def _baseline_feature_loop(G, det, num_images, batch, device):
    """Upstream-style loop: 4 images per G call, features to the host after each detector batch, host float64 sums."""
    raw_mean = raw_cov = None
    with torch.no_grad():
        for start in range(0, num_images, batch):
            k = min(batch, num_images - start)
            images = [metric_utils.quantize_images(G(torch.randn([4, G.z_dim], device=device),
                                                     torch.zeros([4, G.c_dim], device=device)))
                      for _ in range(-(-k // 4))]
            feats = det.features(torch.cat(images)[:k]).cpu().numpy().astype(np.float64)  # the per-batch sync
            raw_mean = feats.sum(axis=0) if raw_mean is None else raw_mean + feats.sum(axis=0)
            raw_cov = feats.T @ feats if raw_cov is None else raw_cov + feats.T @ feats
    return raw_mean, raw_cov


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _bench_feature_loop(G, det, num_images, batch, device, dataset_kwargs):
    """The metrics' generated-feature loop against the upstream-style loop, same images count, same run."""
    opts = metric_utils.MetricOptions(G=G, dataset_kwargs=dataset_kwargs, device=device, detector=det,
                                      batch_size=batch)
    batch_gen = metric_utils.choose_batch_gen(G, device, batch)

    def ours(n):
        return lambda: metric_utils.compute_feature_stats_for_generator(opts, det, max_items=n, capture_mean_cov=True)
    ours(min(num_images, batch_gen))()                     # warm-up (cudnn autotune of the big G calls)
    _baseline_feature_loop(G, det, min(num_images, batch), batch, device)
    new_s = _timed(ours(num_images), device)
    base_s = _timed(lambda: _baseline_feature_loop(G, det, num_images, batch, device), device)
    print(f'feature loop    {num_images / new_s:9.1f} img/s (batch_gen={batch_gen}, overlapped={device.type == "cuda"})'
          f'   baseline {num_images / base_s:9.1f} img/s (batch_gen=4, host copy per batch)'
          f'   ratio {base_s / new_s:5.2f}x')


def _bench_bootstrap(num_gen, feats_per_s, device):
    """Time fid_uncertainty on num_gen synthetic features; compare with extracting them."""
    rng = np.random.default_rng(0)
    d = 2048
    gen = torch.from_numpy(rng.standard_normal((num_gen, d), dtype=np.float32)).to(device)
    a = rng.standard_normal((d, d))
    mu_r, sigma_r = rng.standard_normal(d), torch.from_numpy(a @ a.T / d).to(device)
    factor = frechet_inception_distance.psd_factor(sigma_r)  # the point value's, reused as in the metric
    elapsed = _timed(lambda: frechet_inception_distance.fid_uncertainty(0.0, gen, mu_r, sigma_r, factor_real=factor),
                     device)
    extract = num_gen / feats_per_s
    print(f'fid bootstrap   {elapsed:9.2f} s for {num_gen} features x {frechet_inception_distance.BOOTSTRAP_REPLICATES}'
          f' replicates   extraction {extract:9.2f} s   ratio {elapsed / extract:5.3f}x')


def _synthetic_stats(x):
    stats = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True)
    stats.append_torch(x)
    return stats


def _bench_feature_space(num_gen, num_real, dim, feats_per_s, device):
    """Time prdc, memo and pull on synthetic features; compare with extracting as many features."""
    rng = np.random.default_rng(0)
    labels = np.arange(num_real) % 5 == 0
    real = rng.standard_normal((num_real, dim), dtype=np.float32) + 0.5 * labels[:, None]
    gen = rng.standard_normal((num_gen, dim), dtype=np.float32)
    feats = feature_space.Features(_synthetic_stats(torch.from_numpy(real).to(device)),
                                   _synthetic_stats(torch.from_numpy(gen).to(device)), device, 'bench')
    opts = metric_utils.MetricOptions(device=device)
    times = dict(prdc=_timed(lambda: prdc.prdc_record(feats, num_gen, 'p'), device),
                 memo=_timed(lambda: memorisation.memorisation_record(opts, feats, num_gen, 'm'), device),
                 pull=_timed(lambda: pull.pull_record(opts, feats, labels, num_gen, 'u'), device))
    total, extract = sum(times.values()), (num_gen + num_real) / feats_per_s
    parts = ', '.join(f'{k} {v:.2f}' for k, v in times.items())
    print(f'feature-space   {total:9.2f} s for {num_gen} x {num_real} {dim}-d features ({parts})   extraction {extract:9.2f} s'
          f'   ratio {total / extract:5.3f}x')


def _bench_shared_pass(G, det, kwargs, num_gen, device, metric):
    """`metric` (it runs the feature pass), then the three Inception-space metrics from the same pass."""
    shared = metric_utils.SharedFeatures()
    run = lambda m: metric_main.calc_metric(m, G, kwargs, device=device, detector=det, num_gen=num_gen,  # noqa: E731
                                            cache=False, shared=shared)
    first_s = _timed(lambda: run(metric), device)
    times = {m: _timed(lambda m=m: run(m), device) for m in ('prdc50k_full', 'memo50k_full', 'pull50k_full')}
    parts = ', '.join(f'{k} {v:.2f}' for k, v in times.items())
    print(f'shared pass     {sum(times.values()):9.2f} s for the new metrics ({parts})   {metric} with the feature pass '
          f'{first_s:9.2f} s   ratio {sum(times.values()) / first_s:5.3f}x')


@click.command()
@click.option('--network', help='Snapshot pickle to time instead of a fresh Generator')
@click.option('--resolution', type=int, default=256, show_default=True)
@click.option('--cbase', type=int, default=16384, show_default=True, help='Generator channel_base (fresh G)')
@click.option('--num-gen', type=int, default=5000, show_default=True)
@click.option('--num-real', type=int, default=1000, show_default=True)
@click.option('--batch', type=int, default=64, show_default=True)
@click.option('--metric', default='fid50k_full', show_default=True)
@click.option('--detector', default='auto', show_default=True)
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--repeats', type=int, default=3, show_default=True)
@click.option('--loop-images', type=int, default=512, show_default=True,
              help='Images for the feature-loop comparison (at most --num-gen)')
@click.option('--nn-real', type=int, help='Real rows of the synthetic feature-space timing  [default: --num-real]')
@click.option('--nn-dim', type=int, default=2048, show_default=True, help='Their dimension (Inception pool: 2048)')
def main(network, resolution, cbase, num_gen, num_real, batch, metric, detector, device, repeats, loop_images,
         nn_real, nn_dim):
    """Benchmark the metric pipeline."""
    device = torch.device('cuda' if device == 'auto' and torch.cuda.is_available() else
                          'cpu' if device == 'auto' else device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    G = _make_generator(network, resolution, cbase, device)
    resolution = G.img_resolution
    det = resolve_detector(detector, device=device)
    batch_gen = metric_utils.choose_batch_gen(G, device, batch)
    print(f'device {device}; detector {det.name} sha256 {det.sha256[:16]}...; resolution {resolution}; batch {batch}; '
          f'batch_gen {batch_gen}')

    # Generation: our batching vs upstream's 4 images per G call, batch_gen images either way.
    def generate(per_call):
        def run():
            with torch.no_grad():
                for _ in range(batch_gen // per_call):
                    z = torch.randn([per_call, G.z_dim], device=device)
                    metric_utils.quantize_images(G(z, torch.zeros([per_call, G.c_dim], device=device)))
        return run
    ours = _rate(generate(batch_gen), batch_gen, device, repeats)
    base = _rate(generate(min(4, batch_gen)), batch_gen, device, repeats)
    print(f'generation      {ours:9.1f} img/s (batch_gen={batch_gen})   baseline {base:9.1f} img/s (batch_gen=4)'
          f'   ratio {ours / base:5.2f}x')

    # Feature extraction.
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, device=device)
    feats = _rate(lambda: det.features(images), batch, device, repeats)
    print(f'features        {feats:9.1f} img/s')
    _bench_bootstrap(num_gen, feats, device)
    _bench_feature_space(num_gen, nn_real or num_real, nn_dim, feats, device)

    # The feature loop, then one whole metric (cache off so the real statistics are timed too).
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = os.path.join(tmp, 'reals.zip')
        _make_real_zip(zip_path, num_real, resolution)
        kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=zip_path, resolution=resolution)
        _bench_feature_loop(G, det, min(loop_images, num_gen), batch, device, kwargs)
        start = time.perf_counter()
        res = metric_main.calc_metric(metric, G, kwargs, device=device, detector=det, num_gen=num_gen,
                                      cache=False, progress=True)
        elapsed = time.perf_counter() - start
        print(f'{metric:15s} {elapsed:9.1f} s total ({num_real} reals + {num_gen} fakes): {dict(res.results)}')
        print(f'                {(num_real + num_gen) / elapsed:9.1f} img/s overall')
        _bench_shared_pass(G, det, kwargs, num_gen, device, metric)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
