"""Full training-state checkpoints: atomic save, keep-latest, safe load.

Training state (network/optimizer state_dicts, counters, RNG states) is stored with `torch.save` as
plain containers of tensors and numbers, and loaded with `torch.load(weights_only=True)`, which
refuses arbitrary Python objects: a state file cannot execute code when it is read. This is
separate from the user-facing `network-snapshot-*.pkl` exports, which carry whole modules.

File name: `training-state-<kimg:06d>.pt` in the run directory, named by the images seen when it
was written (cur_nimg // 1000) plus the exact cur_nimg inside. A new file is fully written (temp
file, fsync, rename) before older ones are deleted, so a crash at any moment leaves at least one
complete state on disk.
"""

import glob
import os
import random
import re

import numpy as np
import torch

import dnnlib

PREFIX = 'training-state-'
SUFFIX = '.pt'
_NAME_RE = re.compile(r'^training-state-(\d+)\.pt$')


def state_path(run_dir, cur_nimg):
    """Path of the state file for `cur_nimg`.

    Args:
        run_dir: run directory.
        cur_nimg: images seen.

    Returns:
        str, e.g. '<run_dir>/training-state-000040.pt'.
    """
    return os.path.join(run_dir, f'{PREFIX}{int(cur_nimg) // 1000:06d}{SUFFIX}')


def list_states(run_dir):
    """State files in `run_dir`, oldest first (by the number in the name, then mtime).

    Args:
        run_dir: run directory.

    Returns:
        list of str paths.
    """
    paths = [p for p in glob.glob(os.path.join(glob.escape(run_dir), PREFIX + '*' + SUFFIX))
             if _NAME_RE.match(os.path.basename(p))]
    return sorted(paths, key=lambda p: (int(_NAME_RE.match(os.path.basename(p)).group(1)), os.path.getmtime(p)))


def save_state(run_dir, state, cur_nimg, keep=1):
    """Write `state` atomically, then delete all but the newest `keep` state files.

    Args:
        run_dir: run directory.
        state: dict of tensors / numbers / strings / lists / dicts (weights_only-loadable).
        cur_nimg: images seen; names the file.
        keep: how many state files to keep (>= 1).

    Returns:
        str path of the written file.
    """
    assert keep >= 1
    path = state_path(run_dir, cur_nimg)
    with dnnlib.util.atomic_open(path, 'wb') as f:
        torch.save(state, f)
    # Only now that the new file is complete do older ones go.
    others = [p for p in list_states(run_dir) if os.path.abspath(p) != os.path.abspath(path)]
    for old in others[:max(len(others) - (keep - 1), 0)]:
        try:
            os.remove(old)
        except FileNotFoundError:
            pass
    return path


def load_state(path, map_location='cpu'):
    """Load a state file safely (weights_only: tensors and plain containers only).

    Args:
        path: state file.
        map_location: passed to torch.load.

    Returns:
        the saved dict.
    """
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_state_path(run_dir):
    """Newest state file in `run_dir`, or None.

    Args:
        run_dir: run directory.

    Returns:
        str or None.
    """
    paths = list_states(run_dir)
    return paths[-1] if paths else None


def load_latest(run_dir, map_location='cpu'):
    """Load the newest state file of `run_dir`.

    Args:
        run_dir: run directory.
        map_location: passed to torch.load.

    Returns:
        (path, state) or (None, None) when there is none.
    """
    path = latest_state_path(run_dir)
    if path is None:
        return None, None
    return path, load_state(path, map_location)


# ----------------------------------------------------------------------------
# RNG states in weights_only-loadable form (numpy's state holds an ndarray, which the safe loader
# rejects, so it is carried as a tensor).


def get_rng_state():
    """Snapshot of the python, numpy, torch CPU and torch CUDA generators.

    Returns:
        dict of tensors / tuples / ints.
    """
    np_state = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(kind=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                   has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        torch_cpu=torch.get_rng_state(),
        torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    )
    return state


def set_rng_state(state):
    """Restore generators from `get_rng_state()` output.

    Args:
        state: dict produced by get_rng_state (after a save/load round trip).
    """
    random.setstate(_to_tuple(state['python']))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), int(n['pos']), int(n['has_gauss']),
                         float(n['cached_gaussian'])))
    torch.set_rng_state(state['torch_cpu'])
    cuda_states = state.get('torch_cuda') or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])


def _to_tuple(x):
    """random.setstate needs nested tuples; a round trip may hand back lists."""
    if isinstance(x, (list, tuple)):
        return tuple(_to_tuple(v) for v in x)
    return x


def read_progress(path):
    """(cur_nimg, finished) of a state file without reading its tensors (memory-mapped load).

    Args:
        path: state file.

    Returns:
        (int, bool).
    """
    state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    return int(state['cur_nimg']), bool(state.get('finished', False))


def has_unfinished_state(run_dir):
    """True when `run_dir` holds a training state whose run has not reached its kimg budget."""
    path = latest_state_path(run_dir)
    if path is None:
        return False
    try:
        return not read_progress(path)[1]
    except Exception:  # an unreadable state cannot be continued; the caller starts a new run
        return False
