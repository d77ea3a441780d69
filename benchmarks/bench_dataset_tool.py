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
import resource
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


def _cpu_seconds():
    """CPU time of this process and of its finished children (the pool's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_build(celeba, gen, dest, n, m, resolution, workers):
    """Wall and CPU seconds of the planning pass alone and of the whole build, and the pool size."""
    pool_list = [pools.list_real_pool(celeba), pools.list_generated_pool(gen)]
    wall, cpu = time.perf_counter(), _cpu_seconds()
    pools.inspect_pools(pool_list, resolution, workers)
    planning, planning_cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    wall, cpu = time.perf_counter(), _cpu_seconds()
    study.build_study_sets(celeba, gen, dest, num_subsets=K, subset_size=n, num_generated=m, resolution=resolution,
                           workers=workers, log=lambda _line: None)
    return dict(planning=planning, planning_cpu=planning_cpu, build=time.perf_counter() - wall,
                build_cpu=_cpu_seconds() - cpu, pool_files=sum(len(p.ids) for p in pool_list))


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
        runs, outputs = {}, []
        for label, w in (('1 process', 1), (f'{workers or os.cpu_count()} processes', workers)):
            dest = os.path.join(tmp, f'out-{w}')
            runs[label] = time_build(celeba, gen, dest, n, m, resolution, w)
            outputs.append(_zips(dest))
    identical = outputs[0] == outputs[1] and len(outputs[0]) == 2 * K
    serial, parallel = runs.values()
    print(f'{2 * K}-set build: K={K} x N={n} real, M={m} generated per mix; {serial["pool_files"]} pool files '
          f'{size}x{size} JPEG -> {conversions} PNG {resolution}x{resolution} (lanczos)')
    for label, r in runs.items():
        print(f'  {label:12s}: planning pass {r["pool_files"] / r["planning"]:6.1f} img/s, whole build '
              f'{conversions / r["build"]:6.1f} img/s ({r["build"]:.1f} s wall, {r["build_cpu"]:.1f} s CPU)')
    print(f'  speed-up    : {serial["build"] / parallel["build"]:.2f}x   (outputs byte-identical: {identical})')
    # CPU seconds per image do not depend on what else runs on the machine; wall-clock rates do.
    per_check = serial['planning_cpu'] / serial['pool_files']
    per_image = (serial['build_cpu'] - serial['planning_cpu']) / conversions
    total = per_check * STUDY_POOL + per_image * STUDY_CONVERSIONS
    print(f'  CPU per image: {1000 * per_check:.0f} ms to check, {1000 * per_image:.0f} ms to convert; the real '
          f'study ({STUDY_POOL} pool files, {STUDY_CONVERSIONS} conversions) needs ~{total / 60:.0f} CPU-minutes '
          f'(~{total / 60 / (os.cpu_count() or 1):.0f} min on {os.cpu_count()} idle cores)')
    print('  (wall-clock rates are noisy when other jobs share the cores)')
    if not identical:
        raise SystemExit('the parallel output differs from the serial one')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
