"""The built-in example: the study's pipeline in miniature, on the CPU, in four to five minutes.

    python -m scripts.demo [OUTDIR]        (./demo.sh runs this inside the project's virtual environment)

The study transfers a pretrained network onto small face sets, some with 20% generated images, with a
learning-rate schedule. The demo does the same with scikit-learn's bundled 8x8 handwritten digits,
upscaled, and prints every command before it runs it:
  1. stand-in images: "source domain" digits in every colour (the FFHQ of the demo), a "CelebAMask-HQ"
     folder of warm-coloured digits and a folder of cool-coloured "generated" digits;
  2. dataset_tool.py: the source-domain set, and (celebamask) one real subset and its 20% mix;
  3. train.py from scratch on the source domain: the network to transfer from (and beside it, on the
     second core, calc_metrics.py on the untrained network, which caches the real set's statistics);
  4. train.py --resume=<that network> on the mix with --lr-schedule=ddclr, snapshots at two kimg
     points and a small-sample FID against the real subset there (and, as upstream, at the start),
     with memorisation and the pull towards the mix's cool "generated" digits from the same pass;
  5. scripts.report: the study's tables from the run's metric file;
  6. generate.py: the same seeds through the untrained, the pretrained and the transferred network;
  7. OUTDIR/demo.png: reals, the three generations and the lr curve side by side; the verdict states
     the pull and memorisation with their 95% intervals.
The FID values mean little (tens of images instead of 50,000); the pictures show what was learned.
"""

import glob
import json
import os
import resource
import shlex
import subprocess
import sys
import time
import zipfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOLUTION = 16
NUM_SOURCE = 1437       # digits to pretrain on (sklearn has 1797 digits; the rest feed the study sets)
NUM_REAL_POOL = 300     # stand-in CelebAMask-HQ images (the real tool expects 30,000)
NUM_GENERATED_POOL = 60
SUBSET_SIZE = 100       # the study uses 1000
NUM_GENERATED = 20      # 20% of the subset, as in the study (200 of 1000)
PRETRAIN_KIMG = 20
KIMG = 8                # the study trains 100 kimg and evaluates at 40/60/80/100
SNAP_KIMG = (4, 8)
METRIC_NUM_GEN = 40     # the study uses 50,000 (fid50k_full)
# FID against the real subset; memorisation and the pull towards the cool "generated" digits against the mix.
METRICS = ('fid50k_full', 'memo50k_full', 'pull50k_full')
NET = ['--cfg=auto', '--cbase=512', '--cmax=32', '--map-depth=2', '--workers=0',
       '--device=cpu', '--seed=0']
NUM_IMAGES = 24         # per panel of the final picture, seeds 0..NUM_IMAGES-1
GRID_COLS = 6

# ----------------------------------------------------------------------------
# Stand-in source images.


def _digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit('Error: the demo needs scikit-learn for its bundled digit images (pip install scikit-learn)')
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target  # [1797, 8, 8] in [0, 1], labels


def _render(digit, size, tint, background, rng, noise):
    """An 8x8 digit as a size x size RGB image: tinted strokes on a coloured background."""
    img = Image.fromarray(np.uint8(np.round(digit * 255)), 'L').resize((size, size), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)[..., None] / 255.0
    tint, background = (np.broadcast_to(np.asarray(c, np.float32), (3,)) for c in (tint, background))
    rgb = a * tint + (1 - a) * background  # a one-value colour is a grey level
    rgb = rgb + rng.normal(0, noise, rgb.shape).astype(np.float32)
    return Image.fromarray(np.uint8(np.clip(rgb, 0, 255)), 'RGB')


def _write_images(folder, digits, name_fmt, size, tints, backgrounds, noise, rng):
    """Render `digits` into `folder`, file i named name_fmt.format(i); tints/backgrounds are (low, high)."""
    os.makedirs(folder, exist_ok=True)
    for i, digit in enumerate(digits):
        img = _render(digit, size, rng.uniform(*tints), rng.uniform(*backgrounds), rng, noise)
        img.save(os.path.join(folder, name_fmt.format(i)), quality=95)


def make_sources(root):
    """Write the three stand-in image folders (once); return (source domain, CelebAMask-HQ, generated)."""
    source = os.path.join(root, 'source-domain')
    celeba = os.path.join(root, 'CelebAMask-HQ')
    generated = os.path.join(root, 'generated')
    if all(os.path.isdir(d) for d in (source, celeba, generated)):
        return source, celeba, generated
    digits, _ = _digits()
    rng = np.random.default_rng(0)
    real, fake = digits[:NUM_REAL_POOL], digits[NUM_REAL_POOL:NUM_REAL_POOL + NUM_GENERATED_POOL]
    pretrain = digits[NUM_REAL_POOL + NUM_GENERATED_POOL:][:NUM_SOURCE]
    # Source domain: strokes of any colour on dark backgrounds, broad as FFHQ is (the target is a part
    # of it, as CelebA-HQ is of FFHQ; a pretrained D that never saw the target's colours would call every
    # real image fake and wreck G in the first kimg of the transfer).
    _write_images(source, pretrain, 'digit{:04d}.png', 64, ([60] * 3, [255] * 3), ([0] * 3, [90] * 3), 2, rng)
    # "Real" images: warm strokes on dark blue, JPEG named <index>.jpg like CelebA-HQ.
    _write_images(os.path.join(celeba, 'CelebA-HQ-img'), real, '{}.jpg', 64,
                  ([220, 130, 40], [255, 190, 90]), ([10, 10, 40], [50, 40, 90]), 4, rng)
    # "Generated" images: another look (cool strokes on grey, smoother), PNG, another size.
    _write_images(generated, fake, 'sd_{:04d}.png', 80, ([60, 150, 200], [120, 220, 255]),
                  ([70, 70, 70], [110, 110, 110]), 1, rng)
    return source, celeba, generated

# ----------------------------------------------------------------------------
# Running the steps.


def say(text):
    print(f'[demo] {text}', flush=True)


def _printable(cmd):
    return ' '.join(shlex.quote(c) for c in cmd)


def run(cmd, log, env=None):
    """Run one step as a subprocess, echoing the command; stop the demo if it fails."""
    wait(start(cmd, log, env), cmd)


def start(cmd, log, env=None, output=None):
    """Start one step without waiting for it; its output goes to the console, or to the file `output`."""
    printable = _printable(cmd)
    print(f'\n$ {printable}' + (f'   (output in {output})' if output else ''), flush=True)
    log.write(printable + '\n')
    log.flush()
    stdout = open(output, 'w', encoding='utf-8') if output else None  # noqa: SIM115 (closed by wait)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT if output else None)
    proc.started, proc.output = time.time(), stdout  # the root scripts are run from the repository root
    return proc


def wait(proc, cmd):
    """Wait for a step started with start(); stop the demo if it failed."""
    res = proc.wait()
    if proc.output:
        proc.output.close()
    if res != 0:
        where = f' (see {proc.output.name})' if proc.output else ''
        sys.exit(f'Error: demo step failed (exit {res}){where}: {_printable(cmd)}')
    say(f'step took {time.time() - proc.started:.0f}s')


def one_thread():
    """The environment for a step that shares the two cores with another: one thread each.

    At the demo's size a training step is bound by per-op overhead, so a second thread speeds it up
    little; the second core is worth more to the FID run beside it.
    """
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def newest_run_dir(outdir):
    """The newest NNNNN-* run directory under `outdir` (a re-run may have added one)."""
    runs = sorted(d for d in os.listdir(outdir) if d[:5].isdigit()) if os.path.isdir(outdir) else []
    if not runs:
        sys.exit(f'Error: no run directory in {outdir}')
    return os.path.join(outdir, runs[-1])


def snapshot(run_dir, kimg):
    path = os.path.join(run_dir, f'network-snapshot-{kimg:06d}.pkl')
    if not os.path.isfile(path):
        sys.exit(f'Error: {path} is missing (did the training step stop early?)')
    return path


def build_datasets(out, log):
    """Steps 1-2: the stand-in images and the three dataset zips; returns the datasets folder."""
    py, data = sys.executable, os.path.join(out, 'datasets')
    source, celeba, generated = make_sources(os.path.join(out, 'sources'))
    if not os.path.isfile(os.path.join(data, 'source-digits.zip')):
        say('the source domain: digits of every colour, the demo\'s stand-in for FFHQ')
        run([py, 'dataset_tool.py', f'--source={source}', f'--dest={data}/source-digits.zip',
             f'--resolution={RESOLUTION}'], log)
    if not os.path.isfile(os.path.join(data, 'Mix-dataset1.zip')):
        say(f'the study\'s sets: {SUBSET_SIZE} real images, and the same with {NUM_GENERATED} of them '
            f'replaced by generated ones')
        run([py, 'dataset_tool.py', 'celebamask', f'--celeba-dir={celeba}', f'--generated-dir={generated}',
             f'--dest={data}', '--num-subsets=1', f'--subset-size={SUBSET_SIZE}',
             f'--num-generated={NUM_GENERATED}', f'--resolution={RESOLUTION}', '--seed=0'], log)
    return data


def train(out, data, log):
    """Steps 3-4: pretrain on the source domain (and meanwhile score the untrained network), then
    transfer to the mix; returns both run dirs."""
    pre_dir = pretrain(out, data, log)
    # The study's layout (RUNS/<dataset>/<preset>/), so scripts.report reads it as one cell of the grid.
    runs = os.path.join(out, 'runs', 'Mix-dataset1', 'ddclr')
    say(f'transfer to the mix for {KIMG} kimg with the study\'s DDCLR schedule; FID against the real '
        f'subset ({METRIC_NUM_GEN} generated images) at the start and at {", ".join(map(str, SNAP_KIMG))} kimg')
    # --ema-kimg: after a transfer G_ema has no ramp-up, and auto's 10 kimg half-life would leave it
    # near the pretrained network after 8 kimg. --ada-p-init: ADA's p rises by at most 8/500 in 8 kimg,
    # too slowly to matter; starting at 0.3 slows D's memorising of the 100 images (G still narrows to
    # one or two digit shapes in this budget, see the README).
    run([sys.executable, 'train.py', f'--outdir={runs}', f'--data={data}/Mix-dataset1.zip',
         f'--resume={snapshot(pre_dir, PRETRAIN_KIMG)}', '--lr-schedule=ddclr', f'--kimg={KIMG}',
         f'--snap-kimg={",".join(map(str, SNAP_KIMG))}', f'--metrics={",".join(METRICS)}',
         f'--metric-data={data}/CelebAMask-HQ1.zip', f'--metric-num-gen={METRIC_NUM_GEN}',
         '--ema-kimg=0.5', '--ada-p-init=0.3', '--batch=32', '--tick=1', '--snap=100'] + NET, log)
    return pre_dir, newest_run_dir(runs)


def pretrain(out, data, log):
    """Step 3, with the untrained network's FID computed beside it; returns the pretraining run dir."""
    pre_runs = os.path.join(out, 'pretrain')
    say(f'pretraining from scratch on the source domain for {PRETRAIN_KIMG} kimg (no metrics)')
    # Batch 16: from scratch, twice the updates per kimg teach more than bigger batches in the same time.
    # Snapshots at tick 0 (the untrained network of the picture) and at the end.
    cmd = [sys.executable, 'train.py', f'--outdir={pre_runs}', f'--data={data}/source-digits.zip',
           f'--kimg={PRETRAIN_KIMG}', '--metrics=none', '--aug=noaug', '--batch=16', '--tick=2',
           f'--snap={PRETRAIN_KIMG}'] + NET
    proc = start(cmd, log, env=one_thread())
    fid = _start_untrained_fid(out, data, log, pre_runs, proc)
    try:
        wait(proc, cmd)
    except BaseException:
        if fid is not None:
            fid[0].terminate()  # the pretraining failed or was interrupted: leave no FID run behind
        raise
    pre_dir = newest_run_dir(pre_runs)
    if fid is not None:
        wait(*fid)
        say(f'untrained network: FID {fid_points(pre_dir)[-1][1]:.0f} against the real subset '
            f'({METRIC_NUM_GEN} generated images)')
    return pre_dir


def _start_untrained_fid(out, data, log, pre_runs, proc):
    """Start calc_metrics.py on the tick-0 snapshot once the pretraining `proc` has written it.

    Returns (process, command), or None if the pretraining ended without that snapshot.
    """
    untrained = _wait_for_untrained_snapshot(pre_runs, proc)
    if untrained is None:
        return None
    say('meanwhile, on the second core: the untrained network\'s FID against the real subset (this also '
        'caches the real images\' statistics for the transfer\'s evaluations)')
    cmd = [sys.executable, 'calc_metrics.py', f'--network={untrained}', '--metrics=fid50k_full',
           f'--data={data}/CelebAMask-HQ1.zip', f'--num-gen={METRIC_NUM_GEN}', '--device=cpu']
    return start(cmd, log, env=one_thread(), output=os.path.join(out, 'untrained-fid.log')), cmd


def _wait_for_untrained_snapshot(pre_runs, proc):
    """The tick-0 snapshot's path once the pretraining has written it; None if the process ended first."""
    while True:
        found = sorted(glob.glob(os.path.join(pre_runs, '[0-9]' * 5 + '-*', 'network-snapshot-000000.pkl')))
        if found:
            return found[-1]
        if proc.poll() is not None:
            return None
        time.sleep(0.5)

def render(networks, out, log):
    """Step 6: the same seeds through each network; returns {name: grid.png path}."""
    grids = {}
    for name, pkl in networks.items():
        folder = os.path.join(out, 'images', name)
        run([sys.executable, 'generate.py', f'--network={pkl}', f'--seeds=0-{NUM_IMAGES - 1}', f'--outdir={folder}',
             '--grid=only', f'--grid-cols={GRID_COLS}', '--device=cpu'], log)
        grids[name] = os.path.join(folder, 'grid.png')
    return grids

# ----------------------------------------------------------------------------
# Reading what the steps wrote.


def zip_images(path, count):
    """The first `count` images (by name) of a dataset zip, as uint8 [H, W, 3] arrays."""
    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith('.png'))[:count]
        return [np.asarray(Image.open(z.open(n)).convert('RGB')) for n in names]


def grid_tiles(path, size, count):
    """Cut the first `count` size x size tiles (row-major) out of a grid image."""
    grid = np.asarray(Image.open(path).convert('RGB'))
    cols = grid.shape[1] // size
    return [grid[(i // cols) * size:(i // cols + 1) * size, (i % cols) * size:(i % cols + 1) * size]
            for i in range(count)]


def tile(images, cols):
    """Images [H, W, 3] side by side, `cols` per row, as one uint8 array (missing cells black)."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, img in enumerate(images):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = img
    return out


def lr_curve_of(run_dir):
    """(kimg, lr, label) of the schedule recorded in the run's training_options.json."""
    from schedulers import plot
    with open(os.path.join(run_dir, 'training_options.json'), encoding='utf-8') as f:
        options = json.load(f)
    schedule = options['lr_schedule']
    kimg, lr = plot.lr_curve(schedule, options['total_kimg'], points=400)
    return kimg, lr, plot.label(schedule)


def fid_points(run_dir, metric='fid50k_full'):
    """[(kimg, value)] from the run's metric-<metric>.jsonl, in file order."""
    points = []
    with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), encoding='utf-8') as f:
        for line in f:
            record = json.loads(line)
            points.append((float(record['kimg']), float(next(iter(record['results'].values())))))
    return points


def _digit_features(images):
    """Images as the 8x8 grey levels of sklearn's digits, each stretched to [0, 1] (strokes are brighter
    than the background in every colour scheme of the demo)."""
    small = [np.asarray(Image.fromarray(img).convert('L').resize((8, 8), Image.BOX), np.float32) for img in images]
    return np.stack([(s - s.min()) / max(s.max() - s.min(), 1e-6) for s in small]).reshape(len(small), -1)


def legible(images, k=5):
    """Which images read as a digit, judged against sklearn's own digits; returns (count, digits seen).

    An image counts when its k nearest real digits are about as near as real digits are to each other
    (within the 95th percentile of that distance) and at least k-1 of them are the same digit. A
    classifier's confidence would not do: it is sure of itself on blobs, too.
    """
    from sklearn.neighbors import NearestNeighbors
    digits, labels = _digits()
    x = digits.reshape(len(digits), -1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    limit = np.percentile(nn.kneighbors(x)[0][:, 1:].mean(axis=1), 95)  # column 0 is the digit itself
    dist, idx = nn.kneighbors(_digit_features(images), n_neighbors=k)
    votes = [np.bincount(labels[row], minlength=10) for row in idx]
    ok = [d <= limit and v.max() >= k - 1 for d, v in zip(dist.mean(axis=1), votes)]
    return int(sum(ok)), sorted({int(v.argmax()) for v, good in zip(votes, ok) if good})


# ----------------------------------------------------------------------------
# The final picture.


def compose_picture(panels, curve, out):
    """One PNG: image panels side by side, then the lr curve with the FID points marked.

    Args:
        panels: [(title, uint8 [H, W, 3])], drawn left to right without smoothing.
        curve:  dict kimg, lr (arrays), label (str), fid ([(kimg, value)]).
        out:    PNG path, written atomically.
    """
    import io

    import matplotlib
    matplotlib.use('Agg')  # files only; never needs a display
    import matplotlib.pyplot as plt

    from dnnlib.util import atomic_write_bytes
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.6 * (len(panels) + 1) + 1, 4.4),
                             gridspec_kw=dict(width_ratios=[1] * len(panels) + [1.4]))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image, interpolation='nearest')
        ax.set_title(title, fontsize=9)
        ax.axis('off')
    _draw_curve(axes[-1], curve)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())


def _draw_curve(ax, curve):
    ax.plot(curve['kimg'], curve['lr'], color='tab:blue')
    ax.set_xlabel('kimg (thousands of training images shown)')
    ax.set_ylabel('learning rate (the schedule\'s value)')
    ax.set_title(f'lr schedule {curve["label"]}\nFID at the dashed lines', fontsize=9)
    top = max(curve['lr']) if len(curve['lr']) else 1
    for kimg, value in curve['fid']:
        ax.axvline(kimg, color='grey', linestyle='--', linewidth=0.8)
        ax.annotate(f'FID {value:.0f}', (kimg, top), textcoords='offset points', xytext=(-2, -12),
                    ha='right' if kimg > 0 else 'left', fontsize=8)
    ax.set_ylim(0, top * 1.15)

# ----------------------------------------------------------------------------


def _colour_scheme(img):
    """An image's stroke and background colour: the mean RGB of its brightest quarter and darkest half."""
    pixels = img.reshape(-1, 3).astype(np.float64)
    order = np.argsort(pixels.sum(axis=1))
    return np.concatenate([pixels[order[-len(order) // 4:]].mean(axis=0), pixels[order[:len(order) // 2]].mean(axis=0)])


def colour_gap(images, reals):
    """How far the colours of `images` are from those of `reals`, in 0-255 levels: for each image, the
    distance of its stroke and background colours to the nearest real image's, averaged."""
    ours = np.stack([_colour_scheme(img) for img in images])
    theirs = np.stack([_colour_scheme(img) for img in reals])
    return float(np.linalg.norm(ours[:, None] - theirs[None], axis=2).min(axis=1).mean() / np.sqrt(2))


def verdict(legible_after, legible_reals, count, gap_before, gap_after):
    """One honest line on what the transferred network's images show.

    Args:
        legible_after, legible_reals: how many of `count` transferred images and reals read as digits.
        gap_before, gap_after: colour_gap() of the pretrained and the transferred images to the reals.
    """
    colours = (f'it took on the mix\'s colours (colour gap to the reals {gap_before:.0f} -> {gap_after:.0f} levels)'
               if gap_after < 0.5 * gap_before else
               f'its colours did not move much towards the mix\'s (colour gap {gap_before:.0f} -> {gap_after:.0f})')
    more = 'more kimg would help (PRETRAIN_KIMG and KIMG in scripts/demo.py).'
    if legible_after >= 0.5 * legible_reals:
        return f'the transferred network draws legible digits and {colours}: training learned something.'
    if legible_after > 0:
        return (f'partly learned: {colours}, but only {legible_after} of {count} images read as digits; '
                f'varied, legible digits take longer than this budget: {more}')
    return f'honest note: {colours}, but within this budget the digits are NOT legible yet; {more}'


def last_record(run_dir, metric):
    """The last line of the run's metric-<metric>.jsonl as a dict, or None."""
    path = os.path.join(run_dir, f'metric-{metric}.jsonl')
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _value(record, suffix):
    """(value, ci95 or None) of the result key ending in `suffix` (any generated-image count), or None."""
    key = next((k for k in record['results'] if k.endswith(suffix)), None)
    if key is None:
        return None
    return record['results'][key], (record.get('uncertainty') or {}).get(key, {}).get('ci95')


def _share(found):
    value, ci = found
    return f'{100 * value:.0f}%' + (f' [95% {100 * max(ci[0], 0):.0f}-{100 * min(ci[1], 1):.0f}%]' if ci else '')


def lean_text(run_dir):
    """One line on the pull towards the mix's generated digits and on memorisation at the last point."""
    pull, memo = last_record(run_dir, 'pull50k_full'), last_record(run_dir, 'memo50k_full')
    parts = []
    if pull is not None and _value(pull, '_nn') is not None:
        nn, base = _value(pull, '_nn'), _value(pull, '_base')[0]
        lean = 'leans towards them' if nn[1] and nn[1][0] > base else 'shows no clear lean towards them'
        parts.append(f'pull: {_share(nn)} of its samples are nearest a cool "generated" training digit, which are '
                     f'{100 * base:.0f}% of the mix: the network {lean}')
    if memo is not None and _value(memo, '_full') is not None:
        parts.append(f'memorised (a training digit much nearer than any other): {_share(_value(memo, "_full"))}')
    return '; '.join(parts) + f' (at {KIMG} kimg, {METRIC_NUM_GEN} samples)' if parts else \
        'pull and memorisation: not measured (no metric-pull50k_full.jsonl / metric-memo50k_full.jsonl)'


def _fid_text(points):
    """', FID 123' for the first of [(kimg, value)] points, '' for none."""
    return f', FID {points[0][1]:.0f}' if points else ''


def summarise(out, data, run_dir, grids):
    """Step 7: write demo.png and say, with numbers, whether the digits came out legible."""
    count = NUM_IMAGES
    reals = zip_images(os.path.join(data, 'Mix-dataset1.zip'), count)
    tiles = {name: grid_tiles(path, RESOLUTION, count) for name, path in grids.items()}
    kimg, lr, label = lr_curve_of(run_dir)
    fid = fid_points(run_dir)
    titles = ['reals: Mix-dataset1\n(80% "real", 20% "generated")', 'untrained network\n(after its first step)',
              f'before the transfer: pretrained\n{PRETRAIN_KIMG} kimg, digits of every colour{_fid_text(fid[:1])}',
              f'after the transfer:\n{KIMG} kimg on the mix, DDCLR{_fid_text(fid[-1:])}']
    images = [reals, tiles['untrained'], tiles['pretrained'], tiles['transferred']]
    panels = [(title, tile(group, GRID_COLS)) for title, group in zip(titles, images)]
    picture = os.path.join(out, 'demo.png')
    compose_picture(panels, dict(kimg=kimg, lr=lr, label=label, fid=fid), picture)
    scores = {name: legible(images) for name, images in [('reals', reals)] + list(tiles.items())}
    say(f'legible digits (near sklearn\'s own, unambiguous) out of {count}: ' +
        ', '.join(f'{name} {n} (digits {"".join(map(str, seen)) or "none"})' for name, (n, seen) in scores.items()))
    gaps = {name: colour_gap(tiles[name], reals) for name in ('pretrained', 'transferred')}
    say(verdict(scores['transferred'][0], scores['reals'][0], count, gaps['pretrained'], gaps['transferred']))
    say(lean_text(run_dir))
    return picture


def main(out):
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    say(f'writing everything under {out}')
    with open(os.path.join(out, 'commands.txt'), 'a', encoding='utf-8') as log:
        data = build_datasets(out, log)
        pre_dir, run_dir = train(out, data, log)
        run([sys.executable, '-m', 'scripts.report', os.path.join(out, 'runs'), f'--out={out}/report',
             f'--points={",".join(map(str, SNAP_KIMG))}'], log)
        grids = render({'untrained': snapshot(pre_dir, 0), 'pretrained': snapshot(pre_dir, PRETRAIN_KIMG),
                        'transferred': snapshot(run_dir, KIMG)}, out, log)
    picture = summarise(out, data, run_dir, grids)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f'\n[demo] done in {time.time() - t0:.0f}s (CPU time of the steps {cpu.ru_utime + cpu.ru_stime:.0f}s). '
          f'Look at:\n'
          f'  {picture}   reals, generated images before and after, the lr curve\n'
          f'  {run_dir}/   the transfer run (log.txt, stats.jsonl, metric-fid50k_full.jsonl, snapshots)\n'
          f'  {out}/report/report.md   the study\'s tables (one dataset, one schedule here)', flush=True)


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'demo-out')
