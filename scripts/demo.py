"""The built-in example: the whole study pipeline in miniature, on the CPU, in a few minutes.

    python -m scripts.demo OUTDIR        (./demo.sh runs this inside the project's virtual environment)

Steps, each one the same command a user would type (printed before it runs):
  1. make stand-in source images: a "CelebAMask-HQ" folder (CelebA-HQ-img/<index>.jpg) and a folder of
     "generated" images, both drawn from scikit-learn's bundled 8x8 handwritten digits;
  2. dataset_tool.py celebamask: one real subset and its mix with 20% generated images, 32x32;
  3. train.py on the mix with --lr-schedule ddclr, snapshots and a small-sample FID against the real
     subset at two kimg points;
  4. scripts.report: the study's tables and figures from the run's metric files;
  5. generate.py: an image grid from the last snapshot.

The numbers mean nothing (a tiny network trained for a few kimg on digits); the point is that every
piece runs end to end and writes the same files a full run does.
"""

import os
import shlex
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_REAL_POOL = 300     # stand-in CelebAMask-HQ images (the real tool expects 30,000)
NUM_GENERATED_POOL = 60
SUBSET_SIZE = 200       # the study uses 1000
NUM_GENERATED = 40      # 20% of the subset, as in the study (200 of 1000)
RESOLUTION = 32
KIMG = 2                # the study trains 100 kimg and evaluates at 40/60/80/100
SNAP_KIMG = '1,2'
METRIC_NUM_GEN = 256    # the study uses 50,000 (fid50k_full)


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit('Error: the demo needs scikit-learn for its bundled digit images (pip install scikit-learn)')
    return load_digits().images.astype(np.float32) / 16.0  # [1797, 8, 8] in [0, 1]


def _render(digit, size, tint, background, rng, noise):
    """An 8x8 digit as a size x size RGB image: tinted strokes on a coloured background."""
    img = Image.fromarray(np.uint8(np.round(digit * 255)), 'L').resize((size, size), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)[..., None] / 255.0
    rgb = a * np.asarray(tint, np.float32) + (1 - a) * np.asarray(background, np.float32)
    rgb = rgb + rng.normal(0, noise, rgb.shape).astype(np.float32)
    return Image.fromarray(np.uint8(np.clip(rgb, 0, 255)), 'RGB')


def make_sources(root):
    """Write the stand-in CelebAMask-HQ layout and a 'generated' pool; return their folders."""
    celeba = os.path.join(root, 'CelebAMask-HQ')
    generated = os.path.join(root, 'generated')
    img_dir = os.path.join(celeba, 'CelebA-HQ-img')
    if os.path.isdir(img_dir) and os.path.isdir(generated):
        return celeba, generated
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(generated, exist_ok=True)
    digits = _digits()
    rng = np.random.default_rng(0)
    # "Real" images: warm strokes on dark backgrounds, JPEG like CelebA-HQ.
    for i in range(NUM_REAL_POOL):
        img = _render(digits[i], 64, tint=rng.uniform([180, 120, 60], [255, 200, 140]),
                      background=rng.uniform(0, 60, 3), rng=rng, noise=4)
        img.save(os.path.join(img_dir, f'{i}.jpg'), quality=95)
    # "Generated" images: a different look (cool strokes, lighter background, smoother), PNG, other size.
    for i in range(NUM_GENERATED_POOL):
        img = _render(digits[NUM_REAL_POOL + i], 80, tint=rng.uniform([60, 120, 180], [140, 200, 255]),
                      background=rng.uniform(40, 100, 3), rng=rng, noise=1)
        img.save(os.path.join(generated, f'sd_{i:04d}.png'))
    return celeba, generated


def run(cmd, log):
    """Run one step as a subprocess, echoing the command; stop the demo if it fails."""
    printable = ' '.join(shlex.quote(c) for c in cmd)
    print(f'\n$ {printable}', flush=True)
    log.write(printable + '\n')
    log.flush()
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT)  # the root scripts are run from the repository root
    if res.returncode != 0:
        sys.exit(f'Error: demo step failed (exit {res.returncode}): {printable}')
    print(f'[demo] step took {time.time() - t0:.0f}s', flush=True)


def newest_run_dir(outdir):
    runs = sorted(d for d in os.listdir(outdir) if d[:5].isdigit())
    if not runs:
        sys.exit(f'Error: no run directory in {outdir}')
    return os.path.join(outdir, runs[-1])


def main(out):
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    py = sys.executable
    t0 = time.time()
    with open(os.path.join(out, 'commands.txt'), 'a') as log:
        print(f'[demo] writing everything under {out}', flush=True)
        celeba, generated = make_sources(os.path.join(out, 'sources'))
        data = os.path.join(out, 'datasets')
        if not os.path.isfile(os.path.join(data, 'Mix-dataset1.zip')):
            run([py, 'dataset_tool.py', 'celebamask', f'--celeba-dir={celeba}', f'--generated-dir={generated}',
                 f'--dest={data}', '--num-subsets=1', f'--subset-size={SUBSET_SIZE}',
                 f'--num-generated={NUM_GENERATED}', f'--resolution={RESOLUTION}', '--seed=0'], log)

        # Re-running the demo continues (or skips) the run instead of starting a new one.
        runs = os.path.join(out, 'runs', 'Mix-dataset1', 'ddclr')
        run([py, 'train.py', f'--outdir={runs}', f'--data={data}/Mix-dataset1.zip',
             f'--metric-data={data}/CelebAMask-HQ1.zip', '--lr-schedule=ddclr', f'--kimg={KIMG}',
             f'--snap-kimg={SNAP_KIMG}', '--metrics=fid50k_full', f'--metric-num-gen={METRIC_NUM_GEN}',
             '--cfg=auto', '--batch=16', '--gamma=0.05', '--cbase=2048', '--cmax=64', '--map-depth=2',
             '--tick=1', '--snap=100', '--workers=0', '--device=cpu', '--seed=0'], log)

        run([py, '-m', 'scripts.report', os.path.join(out, 'runs'), f'--out={out}/report', f'--points={SNAP_KIMG}'], log)

        run_dir = newest_run_dir(runs)
        snapshot = os.path.join(run_dir, f'network-snapshot-{KIMG:06d}.pkl')
        run([py, 'generate.py', f'--network={snapshot}', '--seeds=0-15', f'--outdir={out}/generated-images',
             '--grid=only', '--device=cpu'], log)

    print(f'\n[demo] done in {time.time() - t0:.0f}s. Look at:\n'
          f'  {run_dir}/          run directory (log.txt, stats.jsonl, metric-fid50k_full.jsonl, snapshots)\n'
          f'  {out}/report/report.md   tables as in the paper (one dataset, one schedule here)\n'
          f'  {out}/generated-images/grid.png', flush=True)


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'demo-out')
