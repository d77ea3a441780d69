"""What a run writes besides checkpoints: image grids, stats.jsonl/TensorBoard, status.json, and the
roll-back of logs when a run continues from a checkpoint.

Only rank 0 writes. Every file is either written atomically (temp file, then rename) or appended
line by line (stats.jsonl, log.txt, metric-*.jsonl); a checkpoint records the appended files'
sizes, so a continued run first cuts them back to that point and then writes each tick and each
evaluation exactly once.
"""

import contextlib
import glob
import json
import os

import numpy as np
import PIL.Image

import dnnlib

STATUS_FILE = 'status.json'
APPENDED_FILES = ('stats.jsonl', 'log.txt', 'metric-*.jsonl')  # cut back on continue


@contextlib.contextmanager
def naming_errors(path):
    """Re-raise an OSError from writing `path` with the path in it (write() errors carry no file name)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, path) from e


# ----------------------------------------------------------------------------
# Image grids.


def snapshot_grid_indices(training_set, random_seed=0):
    """Dataset indices of the reals shown in reals.png (independent of --seed, as upstream).

    Returns:
        ((gw, gh), list of indices): without labels a shuffled tiling, with labels one label group per row.
    """
    rnd = np.random.RandomState(random_seed)
    gw = int(np.clip(7680 // training_set.image_shape[2], 7, 32))
    gh = int(np.clip(4320 // training_set.image_shape[1], 4, 32))
    if not training_set.has_labels:
        all_indices = list(range(len(training_set)))
        rnd.shuffle(all_indices)
        return (gw, gh), [all_indices[i % len(all_indices)] for i in range(gw * gh)]
    label_groups = dict()
    for idx in range(len(training_set)):
        key = tuple(training_set.get_details(idx).raw_label.flat[::-1])
        label_groups.setdefault(key, []).append(idx)
    label_order = sorted(label_groups.keys())
    for key in label_order:
        rnd.shuffle(label_groups[key])
    grid_indices = []
    for y in range(gh):
        key = label_order[y % len(label_order)]
        indices = label_groups[key]
        grid_indices += [indices[x % len(indices)] for x in range(gw)]
        label_groups[key] = [indices[(i + gw) % len(indices)] for i in range(len(indices))]
    return (gw, gh), grid_indices


def setup_snapshot_image_grid(training_set, random_seed=0):
    """((gw, gh), images uint8 [N, C, H, W], labels [N, c_dim]) of the reals shown in reals.png."""
    grid_size, indices = snapshot_grid_indices(training_set, random_seed)
    images, labels = zip(*[training_set[i] for i in indices])
    return grid_size, np.stack(images), np.stack(labels)


def save_image_grid(img, fname, drange, grid_size):
    """Tile [gw*gh, C, H, W] images (values in `drange`) into a gh x gw PNG mosaic, written atomically."""
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = np.rint((img - lo) * (255 / (hi - lo))).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _N, C, H, W = img.shape
    assert C in (1, 3), f'cannot save {C}-channel images'
    img = img.reshape(gh, gw, C, H, W).transpose(0, 3, 1, 4, 2).reshape(gh * H, gw * W, C)  # [gh*H, gw*W, C]
    pil = PIL.Image.fromarray(img[:, :, 0], 'L') if C == 1 else PIL.Image.fromarray(img, 'RGB')
    with naming_errors(fname), dnnlib.util.atomic_open(fname, 'wb') as f:
        pil.save(f, format='PNG')


def kimg_label(kimg):
    """File-name label of a kimg point: '000040' for whole kimg, '000000.016' otherwise."""
    kimg = float(kimg)
    return f'{int(kimg):06d}' if kimg.is_integer() else f'{kimg:010.3f}'


# ----------------------------------------------------------------------------
# Appended logs: sizes at a checkpoint, and the cut back on continue.


def _appended_paths(run_dir):
    paths = []
    for pattern in APPENDED_FILES:
        paths += glob.glob(os.path.join(glob.escape(run_dir), pattern))
    return sorted(paths)


def appended_sizes(run_dir):
    """{file name: size in bytes} of the appended logs now (stored in every checkpoint's meta)."""
    return {os.path.basename(p): os.path.getsize(p) for p in _appended_paths(run_dir)}


def roll_back_appended(run_dir, sizes):
    """Cut each appended log back to its size in `sizes`; delete those that did not exist then.

    Each cut is atomic (the kept prefix goes to a temp file that replaces the log).

    Returns:
        list of file names changed.
    """
    changed = []
    for path in _appended_paths(run_dir):
        name = os.path.basename(path)
        keep = sizes.get(name)
        if keep is None:
            os.remove(path)
        elif os.path.getsize(path) > keep:
            with open(path, 'rb') as f:
                prefix = f.read(keep)
            dnnlib.util.atomic_write_bytes(path, prefix)
        else:
            continue
        changed.append(name)
    return changed


# ----------------------------------------------------------------------------
# status.json: the run says where it stands (read by scripts/ to decide what is finished).


def write_status(run_dir, state, counters, total_kimg, metrics, snap_kimg):
    """Write <run_dir>/status.json atomically.

    Args:
        run_dir: run directory.
        state: 'running', 'finished', 'preempted' or 'interrupted'.
        counters: training.counters.Counters.
        total_kimg: the run's budget.
        metrics: names of the metrics evaluated at every snapshot.
        snap_kimg: requested kimg points.
    """
    status = dict(state=state, cur_kimg=counters.cur_nimg / 1000, total_kimg=float(total_kimg),
                  evaluated_kimg=[float(k) for k in counters.points_done], metrics=list(metrics),
                  snap_kimg=[float(k) for k in snap_kimg], cur_tick=counters.cur_tick)
    path = os.path.join(run_dir, STATUS_FILE)
    with naming_errors(path):
        dnnlib.util.atomic_write_text(path, json.dumps(status, indent=2) + '\n')


def read_status(run_dir):
    """The status.json of `run_dir` as a dict, or None when missing or unreadable."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE), encoding='utf-8') as f:
            status = json.load(f)
        return status if isinstance(status, dict) else None
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------
# stats.jsonl and TensorBoard.


class StatsWriter:
    """Appends one JSON line per tick to stats.jsonl and mirrors the means to TensorBoard when installed."""

    def __init__(self, run_dir, start_time):
        self.start_time = start_time
        self.path = os.path.join(run_dir, 'stats.jsonl')
        self.jsonl = open(self.path, 'at', encoding='utf-8')
        self.tfevents = None
        try:
            import torch.utils.tensorboard as tensorboard
            self.tfevents = tensorboard.SummaryWriter(run_dir)
        except ImportError as err:
            print(f'Skipping tfevents export (pip install tensorboard to get it): {err}')

    def write(self, stats, metric_results, cur_nimg, timestamp):
        with naming_errors(self.path):
            self.jsonl.write(json.dumps(dict(stats, timestamp=timestamp)) + '\n')
            self.jsonl.flush()
        if self.tfevents is None:
            return
        global_step, walltime = int(cur_nimg / 1e3), timestamp - self.start_time
        for name, value in stats.items():
            self.tfevents.add_scalar(name, value.mean, global_step=global_step, walltime=walltime)
        for name, value in metric_results.items():
            self.tfevents.add_scalar(f'Metrics/{name}', value, global_step=global_step, walltime=walltime)
        self.tfevents.flush()

    def close(self):
        self.jsonl.close()
        if self.tfevents is not None:
            self.tfevents.close()
