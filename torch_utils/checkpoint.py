"""Full training-state checkpoints: one generic writer/reader, a checksum on every file, keep two.

A state is a dict of named parts (each a plain container of tensors and numbers, e.g. a
`state_dict()`), stored with `torch.save` and read back with `torch.load(weights_only=True)`, which
refuses arbitrary Python objects: a state file cannot execute code when it is read. This is separate
from the user-facing `network-snapshot-*.pkl` exports, which carry whole modules.

File layout of `training-state-<kimg>.pt` (named by the images seen, see state_path):

    line 1: b'STYLEGAN2-ADA-STATE\\n'
    line 2: JSON {"size": payload bytes, "sha256": of the payload, "meta": {...}} + b'\\n'
    rest:   the torch.save payload

The small JSON `meta` (cur_nimg, finished, ...) can be read without the tensors. A truncated, zeroed
or corrupted file fails the size/sha256 check and is reported as unreadable, so the loader falls
back to the previous file. Every file is fully written (temp file, fsync, rename) before older
ones are deleted, and the newest `keep` (two) stay: a crash or a bad disk block at any moment
leaves a complete state on disk.
"""

import glob
import hashlib
import io
import json
import os
import random
import re

import numpy as np
import torch

import dnnlib

PREFIX = 'training-state-'
SUFFIX = '.pt'
MAGIC = b'STYLEGAN2-ADA-STATE\n'
KEEP = 2
_NAME_RE = re.compile(r'^training-state-(\d+(?:\.\d+)?)\.pt$')
_MAX_HEADER = 1 << 16  # the JSON line is small; a longer "line" means the file is not a state file


class UnreadableState(ValueError):
    """A state file that fails its format, size or checksum check (message names the file)."""


def state_path(run_dir, cur_nimg):
    """Path of the state file for `cur_nimg`: '<run_dir>/training-state-000040.pt' at whole kimg,
    '...-000000.016.pt' in between (every checkpoint of a short run keeps its own name)."""
    kimg = int(cur_nimg) / 1000
    label = f'{int(cur_nimg) // 1000:06d}' if int(cur_nimg) % 1000 == 0 else f'{kimg:010.3f}'
    return os.path.join(run_dir, f'{PREFIX}{label}{SUFFIX}')


def _kimg_of(path):
    return float(_NAME_RE.match(os.path.basename(path)).group(1))


def list_states(run_dir):
    """State files in `run_dir`, oldest first (by the kimg in the name, then mtime)."""
    paths = [p for p in glob.glob(os.path.join(glob.escape(run_dir), PREFIX + '*' + SUFFIX))
             if _NAME_RE.match(os.path.basename(p))]
    return sorted(paths, key=lambda p: (_kimg_of(p), os.path.getmtime(p)))


def remove_stale_temp_files(run_dir):
    """Delete temp files that a killed writer left beside the run's files ('.<name>.*.tmp').

    Returns:
        list of removed paths.
    """
    removed = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), '.*.tmp')):
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


# ----------------------------------------------------------------------------
# What a state holds: named objects, each with state_dict()/load_state_dict().


class Registry:
    """The checkpointed objects of a run by name; `parts()` for a save and `load()` of a read use the
    same table, so a new piece of checkpointed state is one `register` call.

    An object may be None (e.g. no ADA controller): its part is saved as None, and a None part or
    object is skipped on load.
    """

    def __init__(self):
        self._objects = {}

    def register(self, name, obj):
        assert name not in self._objects, f'{name} registered twice'
        self._objects[name] = obj

    def names(self):
        return list(self._objects)

    def parts(self):
        """{name: obj.state_dict()} in registration order."""
        return {name: None if obj is None else obj.state_dict() for name, obj in self._objects.items()}

    def load(self, parts):
        """Load every registered object from `parts` (a missing name is an error: the file is foreign)."""
        for name, obj in self._objects.items():
            if obj is not None and parts[name] is not None:
                obj.load_state_dict(parts[name])


class RngState:
    """The python/numpy/torch generators as a registry entry; `apply=False` reads them but never sets them
    (ranks other than 0 keep their own streams)."""

    def __init__(self, apply=True):
        self.apply = apply

    def state_dict(self):
        return get_rng_state()

    def load_state_dict(self, state):
        if self.apply:
            set_rng_state(state)


# ----------------------------------------------------------------------------
# Writing.


def save_state(run_dir, parts, cur_nimg, meta=None, keep=KEEP):
    """Write `parts` atomically with a checksum, then delete all but the newest `keep` state files.

    Args:
        run_dir: run directory.
        parts: dict name -> weights_only-loadable container (tensors, numbers, strings, lists, dicts).
        cur_nimg: images seen; names the file and goes into meta.
        meta: small JSON-able dict readable without the tensors (cur_nimg is always added).
        keep: how many state files to keep (>= 1).

    Returns:
        str path of the written file.
    """
    assert keep >= 1
    buf = io.BytesIO()
    torch.save(parts, buf)
    payload = buf.getvalue()
    header = dict(size=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                  meta=dict(meta or {}, cur_nimg=int(cur_nimg)))
    path = state_path(run_dir, cur_nimg)
    with dnnlib.util.atomic_open(path, 'wb') as f:
        f.write(MAGIC)
        f.write(json.dumps(header).encode() + b'\n')
        f.write(payload)
    # Only now that the new file is complete do older ones go.
    others = [p for p in list_states(run_dir) if os.path.abspath(p) != os.path.abspath(path)]
    for old in others[:max(len(others) - (keep - 1), 0)]:
        try:
            os.remove(old)
        except FileNotFoundError:
            pass
    return path


# ----------------------------------------------------------------------------
# Reading.


_ZIP_MAGIC = b'PK\x03\x04'  # a bare torch.save file: the format before the checksummed header


def _read_header(f, path):
    start = f.read(len(MAGIC))
    if start.startswith(_ZIP_MAGIC):
        raise _Legacy()
    if start != MAGIC:
        raise UnreadableState(f'{path}: not a training-state file (bad magic; truncated, zeroed or foreign)')
    line = f.readline(_MAX_HEADER)
    try:
        header = json.loads(line.decode())
        int(header['size']), str(header['sha256']), dict(header['meta'])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UnreadableState(f'{path}: damaged header') from None
    return header


class _Legacy(Exception):
    """The file is a bare torch.save dict written before states had a header."""


def _load_legacy(path, map_location='cpu', mmap=False):
    """(meta, parts) of a headerless state file (no checksum: torch's zip reader still catches truncation)."""
    try:
        old = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        meta = dict(finished=bool(old.get('finished', False)), cur_nimg=int(old['cur_nimg']))
        ada = dict(p=float(old['ada_p']), carry=list(old['ada_carry']))
        parts = dict(G=old['G'], D=old['D'], G_ema=old['G_ema'], G_opt=old['G_opt'], D_opt=old['D_opt'],
                     loss=old['loss'], rng=old['rng'], ada=ada if old.get('augment_pipe') is not None else None,
                     counters=dict(cur_nimg=old['cur_nimg'], cur_tick=old['cur_tick'], batch_idx=old['batch_idx'],
                                   tick_start_nimg=old['cur_nimg'], points_done=list(old['snap_kimg_done'])))
    except Exception as e:  # any failure means the file cannot be continued from
        raise UnreadableState(f'{path}: cannot load (headerless state file): {e}') from None
    return meta, parts


def read_meta(path):
    """The small JSON meta of a state file (cur_nimg, finished, ...) without reading its tensors.

    Raises:
        UnreadableState, OSError.
    """
    with open(path, 'rb') as f:
        try:
            return _read_header(f, path)['meta']
        except _Legacy:
            pass
    return _load_legacy(path, mmap=True)[0]


def _check_payload(path, header, size, sha256):
    if size != header['size']:
        raise UnreadableState(f'{path}: truncated ({size} of {header["size"]} payload bytes)')
    if sha256 != header['sha256']:
        raise UnreadableState(f'{path}: checksum mismatch (the file is corrupted)')


def load_state(path, map_location='cpu'):
    """Read a state file, verify size and sha256, and load it safely (weights_only).

    Returns:
        (meta, parts).

    Raises:
        UnreadableState naming the file when any check fails; OSError when it cannot be read.
    """
    with open(path, 'rb') as f:
        try:
            header = _read_header(f, path)
        except _Legacy:
            header = None
        payload = f.read() if header is not None else None
    if header is None:
        return _load_legacy(path, map_location)
    _check_payload(path, header, len(payload), hashlib.sha256(payload).hexdigest())
    try:
        parts = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # a payload that passes the checksum but does not load was written by something else
        raise UnreadableState(f'{path}: cannot load payload: {e}') from None
    return header['meta'], parts


def latest_state_path(run_dir):
    """Newest state file in `run_dir` by name (not checked), or None."""
    paths = list_states(run_dir)
    return paths[-1] if paths else None


def load_latest(run_dir, map_location='cpu', warn=print):
    """Load the newest readable state of `run_dir`, falling back to older files.

    Args:
        run_dir: run directory.
        map_location: passed to torch.load.
        warn: called with one line for every unreadable file skipped.

    Returns:
        (path, meta, parts), or (None, None, None) when `run_dir` has no state file.

    Raises:
        UnreadableState when state files exist but none is readable (never start over silently).
    """
    paths = list_states(run_dir)
    errors = []
    for path in reversed(paths):
        try:
            meta, parts = load_state(path, map_location)
        except (UnreadableState, OSError) as e:
            errors.append(str(e))
            warn(f'Warning: skipping unreadable training state: {e}')
            continue
        return path, meta, parts
    if paths:
        raise UnreadableState(f'{run_dir}: no readable training state ({"; ".join(errors)}); '
                              f'move the damaged files away to start this run over')
    return None, None, None


def verify_state(path):
    """The meta of a state file after checking its payload's size and sha256, as load_state would
    (streamed: no tensors are built).

    Raises:
        UnreadableState, OSError.
    """
    with open(path, 'rb') as f:
        try:
            header = _read_header(f, path)
        except _Legacy:
            header = None
        if header is not None:
            digest, size = hashlib.sha256(), 0
            for block in iter(lambda: f.read(1 << 22), b''):
                digest.update(block)
                size += len(block)
    if header is None:
        return _load_legacy(path, mmap=True)[0]
    _check_payload(path, header, size, digest.hexdigest())
    return header['meta']


def run_progress(run_dir, verify=False):
    """What the newest readable state of `run_dir` says.

    Args:
        run_dir: run directory.
        verify: also check each payload's size and sha256 (what load_latest will find), not only the
            header (cheap).

    Returns:
        'none' (no state file), 'unreadable' (files, none readable), or the meta dict of the newest
        readable file.
    """
    paths = list_states(run_dir)
    for path in reversed(paths):
        try:
            return verify_state(path) if verify else read_meta(path)
        except (UnreadableState, OSError):
            continue
    return 'unreadable' if paths else 'none'


# ----------------------------------------------------------------------------
# RNG states in weights_only-loadable form (numpy's state holds an ndarray, which the safe loader
# rejects, so it is carried as a tensor).


def get_rng_state():
    """Snapshot of the python, numpy, torch CPU and torch CUDA generators (tensors / tuples / ints)."""
    np_state = np.random.get_state()
    return dict(
        python=random.getstate(),
        numpy=dict(kind=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                   has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        torch_cpu=torch.get_rng_state(),
        torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    )


def set_rng_state(state):
    """Restore generators from `get_rng_state()` output (after a save/load round trip)."""
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
