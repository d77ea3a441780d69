"""The worker pool (ordered results, Ctrl-C safe), progress bars, and deferring Ctrl-C around renames."""

import contextlib
import multiprocessing
import os
import signal
import sys
import threading

_worker_state = {}  # what the pool initializer handed this process (e.g. the transform spec)


def worker_state(key, default=None):
    return _worker_state.get(key, default)


def _init_worker(state):
    # Only the parent handles Ctrl-C (it terminates the pool). A worker killed by SIGINT mid-task
    # would lose its result and leave the parent waiting for it forever. SIGINT arrives blocked
    # (see ordered_map), so a Ctrl-C during start-up is dropped here, not raised in the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() sends SIGTERM: die at once, silently
    if hasattr(signal, 'pthread_sigmask'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _worker_state.clear()
    _worker_state.update(state or {})


def _pool_context():
    # On Linux fork starts workers in milliseconds with nothing to re-import (the parent holds no
    # threads here). Elsewhere spawn: fork is unsafe on macOS and absent on Windows.
    return multiprocessing.get_context('fork' if sys.platform.startswith('linux') else 'spawn')


def _block_sigint():
    """Block SIGINT in this thread; returns the previous mask (None where the platform has none)."""
    if not hasattr(signal, 'pthread_sigmask'):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _restore_mask(mask):
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def ordered_map(func, items, workers, state=None, chunksize=4):
    """Yield func(item) for every item, in input order, using `workers` processes (1 = in-process).

    On any exception in the caller (Ctrl-C included) or when the generator is closed, the workers
    are terminated at once, not left to finish their queue.

    Args:
        func: Picklable top-level function.
        items: Sequence of picklable arguments.
        workers: Process count; 0 or None means all cores.
        state: dict each worker can read with `worker_state(key)` (also set when run in-process).
        chunksize: Items handed to a worker at a time.
    """
    workers = min(workers or os.cpu_count() or 1, max(len(items), 1))
    if workers <= 1:
        _worker_state.clear()
        _worker_state.update(state or {})
        for item in items:
            yield func(item)
        return
    pool = None
    mask = _block_sigint()  # workers inherit it; a Ctrl-C meanwhile is raised below, once `pool` is set
    try:
        pool = _pool_context().Pool(workers, initializer=_init_worker, initargs=(state,))
        _restore_mask(mask)
        yield from pool.imap(func, items, chunksize=chunksize)
        pool.close()
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        _restore_mask(mask)
        if pool is not None:
            pool.join()


def progress_bar(total, enabled, desc=None):
    """A tqdm bar (images/s and ETA) when `enabled`, else an object with no-op update/close."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, unit='img', desc=desc, dynamic_ncols=True, leave=False)
        except ImportError:
            pass
    return _NullBar()


class _NullBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT/SIGTERM until the block ends, so a few renames finish together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    signums = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            handler = old[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])  # the default action, now that the block is done
