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
from torch_utils.distributed import print0
from training import outputs
from training import snapshots

PROGRESS_LINE_SEC = 30          # a line of progress at least this often within a long tick


def tick_due(run, counters, done):
    """True when this iteration ends a tick: first iteration, done, tick length, or a kimg point."""
    if done or counters.cur_tick == 0:  # tick 0 ends after the very first iteration
        return True
    if counters.cur_nimg >= counters.tick_start_nimg + run.kimg_per_tick * 1000:
        return True
    return bool(counters.due_points(run.snap_kimg))


def progress_line(state):
    """A line within a long tick (at least every PROGRESS_LINE_SEC), so a slow run never looks stuck."""
    counters, clock = state.counters, state.clock
    now = time.time()
    if now - max(clock.last_line, clock.tick_start) >= PROGRESS_LINE_SEC:
        clock.last_line = now
        print0(f'  ... tick {counters.cur_tick} in progress: kimg {counters.cur_nimg / 1000:.3f}, '
               f'{dnnlib.util.format_time(now - clock.tick_start)} into the tick')


def _resources(run):
    """(CPU RSS, peak GPU memory since the last call) in GiB."""
    cpu_gb = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu_gb = 0.0
    if run.device.type == 'cuda':
        gpu_gb = torch.cuda.max_memory_allocated(run.device) / 2**30
        torch.cuda.reset_peak_memory_stats(run.device)
    return cpu_gb, gpu_gb


def _status_line(run, state, step, now):
    """The tick's status line; `step` is the StepInfo of the tick's last iteration (its lr is the one shown)."""
    counters, clock, model = state.counters, state.clock, state.model
    tick_time = now - clock.tick_start
    kimg_done = max(counters.cur_nimg - counters.tick_start_nimg, 1) / 1000
    cpu_gb, gpu_gb = _resources(run)
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
        f"lrG {r('Progress/lr_G', g.schedule_lr(step.nimg)):<9.3g}",
        f"lrD {r('Progress/lr_D', d.schedule_lr(step.nimg)):<9.3g}",
        f"optimizer-lrG {r('Progress/opt_lr_G', g.lr):<9.3g}",
        f"optimizer-lrD {r('Progress/opt_lr_D', d.lr):.3g}",
    ]
    r('Timing/total_hours', (now - clock.start) / (60 * 60))
    r('Timing/total_days', (now - clock.start) / (24 * 60 * 60))
    print0(' '.join(fields))


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


def _snapshots(run, state, out, done, preempted):
    """Image and network snapshots due at this tick end, then metrics on the network snapshot."""
    model, counters = state.model, state.counters
    image_labels, network_labels, points = _snapshot_labels(run, counters, done, preempted)
    if run.rank == 0:
        for label in image_labels:
            out.grid.save_fakes(model.G_ema, run.run_dir, label)
    results = {}
    if network_labels:
        modules = dict(G=model.G, D=model.D, G_ema=model.G_ema, augment_pipe=model.augment_pipe)
        data = snapshots.snapshot_data(modules, run.training_set_kwargs, counters.cur_nimg, run.num_gpus)
        pkl = snapshots.save_network_snapshots(data, run.run_dir, network_labels) if run.rank == 0 else None
        if out.hooks.metric_fn is not None and run.metrics:
            print0('Evaluating metrics...')
            results = out.hooks.metric_fn(G=data['G_ema'], snapshot_pkl=pkl, cur_nimg=counters.cur_nimg,
                                          device=run.device)
    counters.mark_points(points)
    return results


def _warn_nonfinite(stats):
    """One log line per network whose gradients held NaN/Inf during the tick (they were zeroed)."""
    for name in ('G', 'D'):
        entry = stats.get(f'Grads/{name}/nonfinite')
        total = 0 if entry is None or entry.num == 0 else round(entry.mean * entry.num)
        if total > 0:
            print0(f'Warning: {total} non-finite gradient values in {name} this tick were replaced '
                   f'(NaN -> 0, Inf -> +-1e5); if this persists, lower the lr or try --fp32.')


def save_checkpoint(run, state, finished, status):
    """Write the registered parts as a training-state file, then status.json (rank 0 only; no collectives).

    Args:
        run: the RunConfig.
        state: the TrainingState (its `checkpointed` registry says what the file holds).
        finished: the run reached its budget.
        status: status.json's state ('running', 'finished', 'preempted', 'interrupted').
    """
    sys.stdout.flush()  # log.txt must be complete: its size goes into the checkpoint
    cur_nimg = state.counters.cur_nimg
    meta = dict(finished=bool(finished), outputs=outputs.appended_sizes(run.run_dir))
    path = checkpoint.state_path(run.run_dir, cur_nimg)
    with outputs.naming_errors(path):
        checkpoint.save_state(run.run_dir, state.checkpointed.parts(), cur_nimg, meta=meta)
    outputs.write_status(run.run_dir, status, state.counters, run.total_kimg, run.metrics, run.snap_kimg)
    print(f'Saved training state {os.path.basename(path)}', flush=True)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """Callables the loop hands outwards (all optional)."""
    metric_fn: object = None     # (G, snapshot_pkl, cur_nimg, device) -> {name: value}; train.py builds it
    abort_fn: object = None      # () -> bool: stop after this tick
    progress_fn: object = None   # (cur_kimg, total_kimg) at each tick end
    iteration_fn: object = None  # (model, counters, StepInfo) after each iteration (tests, diagnostics)


@dataclasses.dataclass
class TickOutputs:
    """Where tick ends report: the image grid and stats writer (rank 0; None elsewhere), the statistics
    collector and the hooks."""
    grid: object
    stats_writer: object
    collector: object
    hooks: Hooks


def _report(run, state, out, metric_results):
    """Phase timings, the tick's statistics to stats.jsonl/TensorBoard, the non-finite warning, progress_fn."""
    state.model.timer.report()
    out.collector.update()
    stats = out.collector.as_dict()
    if out.stats_writer is not None:
        out.stats_writer.write(stats, metric_results, state.counters.cur_nimg, time.time())
    _warn_nonfinite(stats)
    if out.hooks.progress_fn is not None:
        out.hooks.progress_fn(state.counters.cur_nimg // 1000, run.total_kimg)


def _checkpoint_if_due(run, state, outcome, done, finished_tick):
    """A checkpoint at every checkpoint_ticks-th tick and whenever the run stops."""
    if outcome is None and finished_tick % run.checkpoint_ticks != 0:
        return
    state.model.fold_pending()  # cross-rank work, on every rank, before rank 0 writes
    if run.rank == 0:
        status = {'finished': 'finished', 'preempted': 'preempted', 'aborted': 'interrupted'}.get(outcome, 'running')
        save_checkpoint(run, state, finished=done, status=status)


def end_tick(run, state, out, step, done, preempted):
    """Tick maintenance: status, abort check, snapshots, metrics, stats, counters, checkpoint.

    Args:
        run: the RunConfig.
        state: the TrainingState.
        out: TickOutputs.
        step: the StepInfo of the iteration that ended the tick.
        done: the budget is reached.
        preempted: a stop was requested.

    Returns:
        'finished', 'aborted', 'preempted' or None (keep training).
    """
    tick_end = time.time()
    _status_line(run, state, step, tick_end)
    aborted = not done and out.hooks.abort_fn is not None and out.hooks.abort_fn()
    if aborted:
        print0('Aborting...')
    metric_results = _snapshots(run, state, out, done or aborted, preempted)
    _report(run, state, out, metric_results)
    outcome = 'finished' if done else 'aborted' if aborted else 'preempted' if preempted else None
    finished_tick = state.counters.cur_tick
    state.counters.next_tick()
    _checkpoint_if_due(run, state, outcome, done, finished_tick)
    state.clock.end_maintenance(tick_end)
    return outcome
