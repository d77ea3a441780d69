"""Throughput of dataset conversion: all cores vs one process, 1024x1024 JPEG -> 512x512 PNG zip.

Synthetic face-sized JPEGs are generated on the fly (smooth gradients plus mild noise, so they
compress and decode like photographs rather than like white noise). Both runs use the same inputs in
the same process; the script prints images/second for each and the speed-up ratio, and checks the two
zips are byte-identical (the parallel path must not change the output).

    python benchmarks/bench_dataset_tool.py [--count 48] [--workers 0] [--size 1024] [--resolution 512]
"""

import os
import sys
import tempfile
import time

import click
import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset_build import convert  # noqa: E402  (after the path set-up)


def make_jpegs(folder, count, size, seed=0):
    """Write `count` photo-like size x size JPEGs (quality 95, like CelebA-HQ) into `folder`."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        a, b, c = rng.uniform(0.2, 1.0, size=3)
        base = np.stack([a * xx + (1 - a) * yy, b * yy, c * (1 - xx)], axis=-1) * 200 + 25
        img = base + rng.normal(0, 6, size=base.shape)
        PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f'{i}.jpg'), quality=95)


def time_conversion(src, dest, resolution, workers):
    start = time.perf_counter()
    convert.convert_dataset(src, dest, width=resolution, height=resolution, resize_filter='lanczos',
                                  workers=workers, log=lambda _line: None)
    return time.perf_counter() - start


@click.command()
@click.option('--count', type=int, default=48, show_default=True, help='Number of synthetic JPEGs')
@click.option('--size', type=int, default=1024, show_default=True, help='Source side length')
@click.option('--resolution', type=int, default=512, show_default=True, help='Output side length')
@click.option('--workers', type=int, default=0, show_default=True, help='Parallel worker count (0 = all cores)')
def main(count, size, resolution, workers):
    """Print images/second for one process and for the pool, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'src')
        os.makedirs(src)
        make_jpegs(src, count, size)
        serial = time_conversion(src, os.path.join(tmp, 'serial.zip'), resolution, workers=1)
        parallel = time_conversion(src, os.path.join(tmp, 'parallel.zip'), resolution, workers=workers)
        with open(os.path.join(tmp, 'serial.zip'), 'rb') as a, open(os.path.join(tmp, 'parallel.zip'), 'rb') as b:
            identical = a.read() == b.read()
    n_workers = workers or os.cpu_count()
    print(f'{count} JPEGs {size}x{size} -> PNG {resolution}x{resolution} (lanczos)')
    print(f'  1 process   : {count / serial:8.1f} img/s  ({serial:.2f} s)')
    print(f'  {n_workers:2d} processes: {count / parallel:8.1f} img/s  ({parallel:.2f} s)')
    print(f'  speed-up    : {serial / parallel:.2f}x   (outputs byte-identical: {identical})')
    if not identical:
        raise SystemExit('the parallel output differs from the serial one')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
