"""Tick ends: the status line, snapshots and metrics, statistics, checkpoints and status.json."""

import dataclasses
import os
import sys
import time

import psutil
import torch

import dnnlib
from torch_utils import checkpoint
from torch_utils import training_stats
from training import outputs
from training import snapshots
from training.model import print0

PROGRESS_LINE_SEC = 30          # a line of progress at least this often within a long tick


@dataclasses.dataclass
class TickClock:
    """Wall-clock marks of the run and of the tick in progress."""
    start: float
    tick_start: float
    maintenance: float = 0.0
    last_line: float = 0.0


def tick_due(run, counters, done):
    """True when this iteration ends a tick: first iteration, done, tick length, or a kimg point."""
    if done or counters.cur_tick == 0:  # tick 0 ends after the very first iteration
        return True
    if counters.cur_nimg >= counters.tick_start_nimg + run.kimg_per_tick * 1000:
        return True
    return bool(counters.due_points(run.snap_kimg))


def progress_line(run, counters, clock):
    """A line within a long tick (at least every PROGRESS_LINE_SEC), so a slow run never looks stuck."""
    now = time.time()
    if now - max(clock.last_line, clock.tick_start) >= PROGRESS_LINE_SEC:
        clock.last_line = now
        print0(run, f'  ... tick {counters.cur_tick} in progress: kimg {counters.cur_nimg / 1000:.3f}, '
                     f'{dnnlib.util.format_time(now - clock.tick_start)} into the tick')


def _status_line(run, model, counters, clock, now):
    tick_time = now - clock.tick_start
    kimg_done = max(counters.cur_nimg - counters.tick_start_nimg, 1) / 1000
    cpu_gb = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu_gb = 0.0
    if run.device.type == 'cuda':
        gpu_gb = torch.cuda.max_memory_allocated(run.device) / 2**30
        torch.cuda.reset_peak_memory_stats(run.device)
    # The schedule's value is the lr curve as the paper draws it; the optimizer's lr also carries
    # the lazy-regularisation ratio I / (I + 1) (e.g. 0.0025 -> 0.002 for G, 0.00235 for D).
    g, d, r = model.opts['G'], model.opts['D'], training_stats.report0
    fields = [
        f"tick {r('Progress/tick', counters.cur_tick):<5d}",
        f"kimg {r('Progress/kimg', counters.cur_nimg / 1e3):<8.1f}",
        f"time {dnnlib.util.format_time(r('Timing/total_sec', now - clock.start)):<12s}",
        f"sec/tick {r('Timing/sec_per_tick', tick_time):<7.1f}",
        f"sec/kimg {r('Timing/sec_per_kimg', tick_time / kimg_done):<7.2f}",
        f"maintenance {r('Timing/maintenance_sec', clock.maintenance):<6.1f}",
        f"cpumem {r('Resources/cpu_mem_gb', cpu_gb):<6.2f}",
        f"gpumem {r('Resources/peak_gpu_mem_gb', gpu_gb):<6.2f}",
        f"augment {r('Progress/augment', model.ada.p if model.ada is not None else 0):.3f}",
        f"lrG {r('Progress/lr_G', g.schedule_lr(counters.cur_nimg - run.batch_size)):<9.3g}",
        f"lrD {r('Progress/lr_D', d.schedule_lr(counters.cur_nimg - run.batch_size)):<9.3g}",
        f"optimizer-lrG {r('Progress/opt_lr_G', g.lr):<9.3g}",
        f"optimizer-lrD {r('Progress/opt_lr_D', d.lr):.3g}",
    ]
    r('Timing/total_hours', (now - clock.start) / (60 * 60))
    r('Timing/total_days', (now - clock.start) / (24 * 60 * 60))
    print0(run, ' '.join(fields))


def _snapshot_labels(run, counters, done, preempted):
    """(image labels, network labels, kimg points) due at this tick end."""
    points = counters.due_points(run.snap_kimg)
    point_labels = [outputs.kimg_label(k) for k in points]
    tick_label = [f'{counters.cur_nimg // 1000:06d}']
    # A preempted tick writes only what a requested kimg point needs: the grace time is short.
    image_due = not preempted and (done or counters.cur_tick % run.image_snapshot_ticks == 0)
    network_due = not preempted and (done or counters.cur_tick % run.network_snapshot_ticks == 0)
    images = list(dict.fromkeys((tick_label if image_due else []) + point_labels))
    networks = list(dict.fromkeys(point_labels + (tick_label if network_due else [])))
    return images, networks, points


def _snapshots(run, model, counters, grid, hooks, done, preempted):
    """Image and network snapshots due at this tick end, then metrics on the network snapshot."""
    image_labels, network_labels, points = _snapshot_labels(run, counters, done, preempted)
    if run.rank == 0:
        for label in image_labels:
            grid.save_fakes(model.G_ema, run.run_dir, label)
    results = {}
    if network_labels:
        modules = dict(G=model.G, D=model.D, G_ema=model.G_ema, augment_pipe=model.augment_pipe)
        data = snapshots.snapshot_data(modules, hooks.training_set_kwargs, counters.cur_nimg, run.num_gpus)
        pkl = snapshots.save_network_snapshots(data, run.run_dir, network_labels) if run.rank == 0 else None
        if hooks.metric_fn is not None and run.metrics:
            print0(run, 'Evaluating metrics...')
            results = hooks.metric_fn(G=data['G_ema'], snapshot_pkl=pkl, cur_nimg=counters.cur_nimg, device=run.device)
    counters.points_done = sorted(set(counters.points_done) | set(points))
    return results


def _warn_nonfinite(run, stats):
    """One log line per network whose gradients held NaN/Inf during the tick (they were zeroed)."""
    for name in ('G', 'D'):
        entry = stats.get(f'Grads/{name}/nonfinite')
        total = 0 if entry is None or entry.num == 0 else round(entry.mean * entry.num)
        if total > 0:
            print0(run, f'Warning: {total} non-finite gradient values in {name} this tick were replaced '
                         f'(NaN -> 0, Inf -> +-1e5); if this persists, lower the lr or try --fp32.')


def save_checkpoint(run, model, counters, finished, state):
    """Fold pending ADA statistics (all ranks), then write the checkpoint and status.json (rank 0)."""
    if model.ada is not None:
        model.ada.fold_pending()  # a collective
    if run.rank != 0:
        return
    sys.stdout.flush()  # log.txt must be complete: its size goes into the checkpoint
    parts = dict(model.parts(), counters=counters.state_dict(), rng=checkpoint.get_rng_state())
    meta = dict(finished=bool(finished), outputs=outputs.appended_sizes(run.run_dir))
    path = checkpoint.state_path(run.run_dir, counters.cur_nimg)
    with outputs.naming_errors(path):
        checkpoint.save_state(run.run_dir, parts, counters.cur_nimg, meta=meta)
    outputs.write_status(run.run_dir, state, counters, run.total_kimg, run.metrics, run.snap_kimg)
    print(f'Saved training state {os.path.basename(path)}', flush=True)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """Callables and data the tick end hands outwards (all optional)."""
    training_set_kwargs: dict
    metric_fn: object = None     # (G, snapshot_pkl, cur_nimg, device) -> {name: value}; train.py builds it
    abort_fn: object = None      # () -> bool: stop after this tick
    progress_fn: object = None   # (cur_kimg, total_kimg) at each tick end


def end_tick(run, model, counters, clock, grid, stats_writer, collector, hooks, done, preempted):
    """Tick maintenance: status, abort check, snapshots, metrics, stats, counters, checkpoint.

    Returns:
        'finished', 'aborted', 'preempted' or None (keep training).
    """
    tick_end = time.time()
    _status_line(run, model, counters, clock, tick_end)
    aborted = not done and hooks.abort_fn is not None and hooks.abort_fn()
    if aborted:
        print0(run, 'Aborting...')
    metric_results = _snapshots(run, model, counters, grid, hooks, done or aborted, preempted)
    model.timer.report()
    collector.update()
    stats = collector.as_dict()
    if stats_writer is not None:
        stats_writer.write(stats, metric_results, counters.cur_nimg, time.time())
    _warn_nonfinite(run, stats)
    if hooks.progress_fn is not None:
        hooks.progress_fn(counters.cur_nimg // 1000, run.total_kimg)
    outcome = 'finished' if done else 'aborted' if aborted else 'preempted' if preempted else None
    finished_tick = counters.cur_tick
    counters.cur_tick += 1
    counters.tick_start_nimg = counters.cur_nimg
    if outcome is not None or finished_tick % run.checkpoint_ticks == 0:
        status = {'finished': 'finished', 'preempted': 'preempted', 'aborted': 'interrupted'}.get(outcome, 'running')
        save_checkpoint(run, model, counters, finished=done, state=status)
    clock.tick_start = time.time()
    clock.maintenance = clock.tick_start - tick_end
    return outcome


