"""Run directories: naming, claiming one atomically, locking it while it trains, and finding the run
that a re-run of the same command continues.

`<outdir>/<id:05d>-<desc>`, id one past the largest numeric prefix in outdir (as upstream). Two
commands started at once in the same outdir may pick the same id; `os.mkdir` lets exactly one of
them create it and the other takes the next id. A run directory holds `.lock` (an flock) while a
process trains in it, so a concurrent start never continues or reuses a run that is alive.
"""

import fcntl
import json
import os
import re

import dnnlib
from training import config

OPTIONS_FILE = 'training_options.json'
LOCK_FILE = '.lock'
_ANY = object()
# Option keys newer versions add, with the value a stored run without the key had in effect (_ANY: a
# stored run without the key matches whatever the new command records).
_ADDED_LATER = {
    'resume_pkl_sha256': _ANY,
    'ema_kwargs': config.DEFAULT_EMA_KWARGS,
    'ada_kwargs': config.DEFAULT_ADA_KWARGS,
}


def _numbered(outdir):
    """[(id, path)] of the numbered run directories in outdir."""
    if not os.path.isdir(outdir):
        return []
    found = []
    for name in os.listdir(outdir):
        m = re.match(r'^(\d+)', name)
        path = os.path.join(outdir, name)
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path))
    return found


def next_run_dir(outdir, desc):
    """`<outdir>/<id:05d>-<desc>` with id one past the largest numeric prefix in outdir (not created)."""
    ids = [i for i, _ in _numbered(outdir)]
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')


class RunLock:
    """An exclusive flock on <run_dir>/.lock, held until close() or process exit."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def try_lock(run_dir):
    """RunLock of run_dir, or None when another process holds it."""
    try:
        return RunLock(run_dir)
    except BlockingIOError:
        return None


def claim_new_run_dir(outdir, desc, options_text, attempts=100):
    """Create the next free run directory, lock it, then write its options (in that order).

    Args:
        outdir: parent directory (created if missing).
        desc: run-name description.
        options_text: callable(run_dir) -> the training_options.json text for that directory.
        attempts: ids to try.

    Returns:
        (run_dir, RunLock).

    Raises:
        OSError when outdir cannot hold directories (read-only, a file, full).
    """
    os.makedirs(outdir, exist_ok=True)
    for _ in range(attempts):
        run_dir = next_run_dir(outdir, desc)
        try:
            os.mkdir(run_dir)
        except FileExistsError:
            continue  # another start took this id a moment ago
        lock = RunLock(run_dir)
        dnnlib.util.atomic_write_text(os.path.join(run_dir, OPTIONS_FILE), options_text(run_dir))
        return run_dir, lock
    raise FileExistsError(f'{outdir}: no free run directory after {attempts} attempts')


def to_json(args):
    """Canonical JSON text of the options (indent 2, insertion order), as stored in the run dir."""
    return json.dumps(args, indent=2)


def normalise(args):
    """Options as plain JSON data without run_dir (for comparing a new command with a stored run)."""
    data = json.loads(json.dumps(args))
    data.pop('run_dir', None)
    return data


def read_run_options(run_dir):
    """The stored options of a run directory, or None if it has no readable training_options.json."""
    try:
        with open(os.path.join(run_dir, OPTIONS_FILE), encoding='utf-8') as f:
            return _easydicts(json.load(f))
    except (OSError, ValueError):
        return None


def _easydicts(obj):
    """JSON data with every dict turned into an EasyDict (the loop reads kwargs as attributes)."""
    if isinstance(obj, dict):
        return dnnlib.EasyDict({k: _easydicts(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_easydicts(v) for v in obj]
    return obj


def same_options(stored, args):
    """True when a stored run's options equal the new command's (keys added later ignored if absent)."""
    stored, wanted = normalise(stored), normalise(args)
    # Runs set up before a key was recorded still continue with the same command when the new value
    # is the one those runs had in effect.
    for key, default in _ADDED_LATER.items():
        if key not in stored and key in wanted and (default is _ANY or wanted[key] == default):
            del wanted[key]
    return stored == wanted


def find_matching_runs(outdir, args):
    """Run directories in outdir with the same options as `args`, newest first."""
    matches = []
    for _, path in sorted(_numbered(outdir), reverse=True):
        stored = read_run_options(path)
        if stored is not None and same_options(stored, args):
            matches.append(path)
    return matches
