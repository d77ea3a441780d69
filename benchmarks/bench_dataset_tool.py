"""Throughput of the study build: the full 10-set `celebamask` build, one process vs all cores, in one run.

A synthetic CelebAMask-HQ-like tree is generated first: `CelebA-HQ-img/<i>.jpg` photo-like JPEGs
(smooth gradients plus mild noise, quality 95, so they decode like photographs rather than like white
noise), an annotation file and a mask folder beside them (not read), and a folder of generated faces.
Then `build_study_sets` makes K=5 real subsets of N images and their 5 mixes with M = N/5 generated
images (10 zips), once with one process and once with the pool. The script prints, for each, the
images/second of the planning pass (every pool file fully decoded) and of the whole build, their
ratio, an estimate for the real study (30,000 + 1,105 pool files, 5 x (1000 + 200) conversions), and
checks that both builds gave byte-identical zips.

    python benchmarks/bench_dataset_tool.py [--count 50] [--size 1024] [--resolution 512] [--workers 0]
"""

import os
import sys
import tempfile
import time

import click
import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset_build import pools, study  # noqa: E402  (after the path set-up)

K = 5
STUDY_POOL, STUDY_CONVERSIONS = 30000 + 1105, K * (1000 + 200)


def make_jpegs(folder, count, size, seed, name=lambda i: f'{i}.jpg'):
    """Write `count` photo-like size x size JPEGs (quality 95, like CelebA-HQ) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        a, b, c = rng.uniform(0.2, 1.0, size=3)
        base = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx)], axis=-1) * 200 + 25
        img = base + rng.normal(0, 6, size=base.shape).astype(np.float32)
        PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, name(i)), quality=95)


def make_tree(root, n, m, size):
    """CelebAMask-HQ/{CelebA-HQ-img, CelebAMask-HQ-mask-anno, attribute file} and generated/: a few
    spare images in each pool, as a real download has more than the sets need."""
    celeba = os.path.join(root, 'CelebAMask-HQ')
    make_jpegs(os.path.join(celeba, 'CelebA-HQ-img'), K * n + K, size, seed=0)
    os.makedirs(os.path.join(celeba, 'CelebAMask-HQ-mask-anno', '0'))
    with open(os.path.join(celeba, 'CelebAMask-HQ-attribute-anno.txt'), 'w') as f:
        f.write(f'{K * n + K}\n')
    gen = os.path.join(root, 'generated')
    make_jpegs(gen, K * m + 1, size, seed=1, name=lambda i: f'sd_{i:05d}.jpg')
    return celeba, gen


def time_build(celeba, gen, dest, n, m, resolution, workers):
    """(seconds of the planning pass alone, seconds of the whole build)."""
    pool_list = [pools.list_real_pool(celeba), pools.list_generated_pool(gen)]
    start = time.perf_counter()
    pools.inspect_pools(pool_list, resolution, workers)
    planning = time.perf_counter() - start
    start = time.perf_counter()
    study.build_study_sets(celeba, gen, dest, num_subsets=K, subset_size=n, num_generated=m, resolution=resolution,
                           workers=workers, log=lambda _line: None)
    return planning, time.perf_counter() - start, sum(len(p.ids) for p in pool_list)


def _zips(dest):
    return {name: open(os.path.join(dest, name), 'rb').read() for name in sorted(os.listdir(dest))
            if name.endswith('.zip')}


@click.command()
@click.option('--count', type=int, default=50, show_default=True, help='N: images per real subset (M = N/5)')
@click.option('--size', type=int, default=1024, show_default=True, help='Source side length')
@click.option('--resolution', type=int, default=512, show_default=True, help='Output side length')
@click.option('--workers', type=int, default=0, show_default=True, help='Parallel worker count (0 = all cores)')
def main(count, size, resolution, workers):
    """Print images/second for one process and for the pool, and their ratio."""
    n, m = count, max(1, count // 5)
    conversions = K * (n + m)
    with tempfile.TemporaryDirectory() as tmp:
        celeba, gen = make_tree(tmp, n, m, size)
        runs = {}
        for label, w in (('1 process', 1), (f'{workers or os.cpu_count()} processes', workers)):
            dest = os.path.join(tmp, f'out-{w}')
            runs[label] = (*time_build(celeba, gen, dest, n, m, resolution, w), _zips(dest))
        (serial_label, serial), (parallel_label, parallel) = runs.items()
        identical = serial[3] == parallel[3] and len(serial[3]) == 2 * K
    print(f'{2 * K}-set build: K={K} x N={n} real, M={m} generated per mix; {serial[2]} pool files '
          f'{size}x{size} JPEG -> {conversions} PNG {resolution}x{resolution} (lanczos)')
    for label, (planning, build, pool_files, _) in runs.items():
        estimate = planning / pool_files * STUDY_POOL + (build - planning) / conversions * STUDY_CONVERSIONS
        print(f'  {label:12s}: planning {pool_files / planning:7.1f} img/s, build {conversions / build:7.1f} img/s '
              f'({build:.1f} s); full study estimate {estimate / 60:.0f} min')
    print(f'  speed-up    : {serial[1] / parallel[1]:.2f}x   (outputs byte-identical: {identical})')
    print('  (shared machine: other jobs on the same cores make these numbers noisy)')
    if not identical:
        raise SystemExit('the parallel output differs from the serial one')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
