"""The StyleGAN2-ADA training loop: set-up, one iteration, tick ends, checkpoints.

The loop's state lives in objects that each own their data and have state_dict()/load_state_dict():
`Counters` (images seen, tick, iteration, kimg points done), `Ema` (G_ema), `AdaController` (p, in
the augmentation pipe's buffer, and its pending statistics), one `NetOptimizer` per network, and the
loss (path-length mean). A checkpoint stores them by name (torch_utils.checkpoint).

Deliberate differences from upstream (see patches/README.md):
- Per-iteration RNG is reseeded from (seed, rank, cur_nimg), and the data order is a pure function of
  (seed, position), so continuing a run from its checkpoint reproduces the uninterrupted run bit for
  bit. Metrics and snapshots do not disturb the training RNG.
- A full training state is saved every `checkpoint_ticks` ticks, at the end, and when SIGTERM or
  SIGUSR1 asks the run to stop (training/preempt.py); re-running continues from it, and the logs
  are first cut back to what they held at that checkpoint.
- Gradients are averaged across ranks by bucketed all-reduces that start during the phase's last
  backward pass (torch_utils.distributed.GradAverager), not by DDP wrappers.
- `snap_kimg` points end a tick and write a snapshot named by the requested kimg.
- Optional lr schedule applied every iteration: lr = lr_at(schedule, cur_nimg) * (I / (I + 1)).
- NaN/Inf gradient entries are zeroed as upstream, but counted and reported (Grads/*/nonfinite).
"""

import dataclasses
import os
import random
import time

import numpy as np
import torch

import dnnlib
from torch_utils import checkpoint
from torch_utils import distributed
from torch_utils import training_stats
from training import outputs
from training import phases as phase_lib
from training import preempt
from training import snapshots
from training import ticks
from training.counters import Counters
from training.model import Model, RunConfig, build_model, print0, transfer_from_pickle
from training.sampler import InfiniteSampler

_NEVER = 1 << 62                # a snapshot interval that never comes


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What one iteration did (handed to iteration_fn)."""
    nimg: int               # images seen when the step began (its lr and EMA beta use this)
    phases: tuple           # names of the phases that ran


@dataclasses.dataclass
class Result:
    """What training_loop returns: the model, where it stopped, and how ('finished', 'preempted', 'aborted')."""
    model: Model
    counters: Counters
    state: str
    continued: bool


# ----------------------------------------------------------------------------
# Set-up.


def _step_seed(random_seed, rank, cur_nimg):
    """Seed torch, numpy and python RNGs from (seed, rank, cur_nimg): a pure function of progress."""
    words = np.random.SeedSequence([int(random_seed), int(rank), int(cur_nimg)]).generate_state(2, dtype=np.uint32)
    torch.manual_seed((int(words[0]) << 32) | int(words[1]))
    np.random.seed(int(words[0]))
    random.seed(int(words[1]))


def _setup_runtime(run, cudnn_benchmark, allow_tf32):
    # Same initial weights on every rank (then broadcast anyway); per-rank streams from the first step.
    torch.manual_seed(run.random_seed)
    np.random.seed(run.random_seed * run.num_gpus + run.rank)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    if run.num_gpus > 1:
        sync_device = run.device if run.device.type == 'cuda' else None
        training_stats.init_multiprocessing(rank=run.rank, sync_device=sync_device)


def _open_dataset(run, training_set_kwargs):
    print0(run, 'Loading training set...')
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    print0(run, f'Num images:  {len(training_set)}')
    print0(run, f'Image shape: {list(training_set.image_shape)}')
    print0(run, f'Label shape: {list(training_set.label_shape)}\n')
    return training_set


def _data_iterator(run, training_set, data_loader_kwargs, start_idx):
    """DataLoader over an InfiniteSampler that starts at the images already seen."""
    sampler = InfiniteSampler(training_set, rank=run.rank, num_replicas=run.num_gpus, seed=run.random_seed,
                              start_idx=start_idx)
    kwargs = dict(data_loader_kwargs)
    if run.device.type != 'cuda':
        kwargs['pin_memory'] = False  # pinning needs CUDA
    if kwargs.get('num_workers', 0) == 0:
        kwargs.pop('prefetch_factor', None)
    return iter(torch.utils.data.DataLoader(dataset=training_set, sampler=sampler,
                                            batch_size=run.batch_size // run.num_gpus, **kwargs))


def _restore(run, model, counters, found):
    """Load a checkpoint (path, meta, parts) into the model and counters."""
    path, _meta, parts = found
    model.load_parts(parts)
    counters.load_state_dict(parts['counters'])
    if run.rank == 0:
        checkpoint.set_rng_state(parts['rng'])
    print0(run, f'Continuing the run from {path} at kimg {counters.cur_nimg / 1000:.3f} (tick {counters.cur_tick}).')


def find_checkpoint(run_dir):
    """The newest readable checkpoint of run_dir as (path, meta, parts), or None; cuts the logs back to it.

    Stale temp files of a killed writer are removed first. A run dir that has state files but none
    readable raises checkpoint.UnreadableState (one line naming the files): never start over silently.
    """
    checkpoint.remove_stale_temp_files(run_dir)
    path, meta, parts = checkpoint.load_latest(run_dir)
    changed = outputs.roll_back_appended(run_dir, meta.get('outputs', {}) if meta else {})
    if changed:
        print(f'Cut {", ".join(changed)} back to the checkpoint {os.path.basename(path) if path else "(none)"}.')
    return (path, meta, parts) if path is not None else None


# ----------------------------------------------------------------------------
# One iteration.


def _fetch_reals(data_iter):
    """The next (uint8 images, labels) batch, on the host."""
    # Host time spent waiting for the loader: large values mean the input pipeline is the bottleneck.
    wait_start = time.perf_counter()
    img, c = next(data_iter)
    training_stats.report0('Timing/data_wait_sec', time.perf_counter() - wait_start)
    return img, c


def _draw_latents(run, num_phases, z_dim):
    """Fresh z for every phase (each phase its own slice, even if skipped), split into rounds."""
    all_z = torch.randn([num_phases * run.batch_size, z_dim], device=run.device)
    return [chunk.split(run.batch_gpu) for chunk in all_z.split(run.batch_size)]


def _draw_labels(training_set, n):
    """`n` labels of random dataset items, on the host (numpy's per-step stream)."""
    return torch.from_numpy(np.stack([training_set.get_label(np.random.randint(len(training_set))) for _ in range(n)]))


def _to_device(run, tensor):
    """Host -> device copy that never makes the host wait: pinned and non-blocking on CUDA."""
    if run.device.type == 'cuda' and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(run.device, non_blocking=True)


def _upload_batch(run, img, real_c, gen_c):
    """One upload for the images and one for all labels; returns per-round reals, their labels, and per
    phase the rounds' generator labels."""
    labels = _to_device(run, torch.cat([real_c, gen_c.to(real_c.dtype)]))
    real_c, gen_c = labels.split([len(real_c), len(gen_c)])
    img = (_to_device(run, img).to(torch.float32) / 127.5 - 1).split(run.batch_gpu)
    gen_cs = [chunk.split(run.batch_gpu) for chunk in gen_c.split(run.batch_size)]
    return img, real_c.split(run.batch_gpu), gen_cs


def training_step(run, model, counters, training_set, data_iter):
    """One iteration: the phases due at batch_idx, EMA, counters, ADA. Returns a StepInfo."""
    step_nimg = counters.cur_nimg
    _step_seed(run.random_seed, run.rank, step_nimg)
    img, real_c = _fetch_reals(data_iter)
    all_z = _draw_latents(run, len(model.phases), model.G.z_dim)
    gen_c = _draw_labels(training_set, len(model.phases) * run.batch_size)
    reals, real_cs, all_c = _upload_batch(run, img, real_c, gen_c)
    for opt in model.opts.values():
        opt.set_lr(step_nimg)
    ran = []
    for phase, gen_zs, gen_cs in zip(model.phases, all_z, all_c):
        if counters.batch_idx % phase.interval == 0:
            module = model.G if phase.net == 'G' else model.D
            phase_lib.run_phase(phase, module, model.opts[phase.net], model.loss,
                                list(zip(reals, real_cs, gen_zs, gen_cs)), model.timer,
                                model.averagers.get(phase.net))
            ran.append(phase.name)
    model.ema.update(step_nimg, run.batch_size)
    counters.cur_nimg += run.batch_size
    counters.batch_idx += 1
    if model.ada is not None:
        model.ada.after_step(counters.batch_idx)
    return StepInfo(nimg=step_nimg, phases=tuple(ran))


# ----------------------------------------------------------------------------
# The iteration loop (tick ends are training/ticks.py).


def _stop_requested(run, stop, batch_idx):
    """Whether SIGTERM/SIGUSR1 arrived; with several ranks they agree every 4 iterations (a small sync)."""
    if run.num_gpus == 1:
        return stop.received is not None
    if batch_idx % 4 != 0:
        return False
    return distributed.any_rank(stop.received is not None, run.device)


def _train(run, model, counters, training_set, data_iter, grid, stats_writer, hooks, iteration_fn, stop, start_time):
    """Iterate until the budget, an abort or a stop request; returns the outcome."""
    now = time.time()  # tick 0's maintenance is the set-up time, as upstream
    clock = ticks.TickClock(start=start_time, tick_start=now, maintenance=now - start_time)
    collector = training_stats.Collector(regex='.*')
    if counters.cur_nimg >= run.total_nimg:
        return 'finished'
    while True:
        step = training_step(run, model, counters, training_set, data_iter)
        done = counters.cur_nimg >= run.total_nimg
        if iteration_fn is not None:
            iteration_fn(model, counters, step)
        preempted = not done and _stop_requested(run, stop, counters.batch_idx)
        if preempted:
            print0(run, f'Received {stop.received or "a stop request"}: writing a checkpoint and stopping.')
        if ticks.tick_due(run, counters, done) or preempted:
            outcome = ticks.end_tick(run, model, counters, clock, grid, stats_writer, collector, hooks, done, preempted)
            if outcome is not None:
                return outcome
        else:
            ticks.progress_line(run, counters, clock)


# ----------------------------------------------------------------------------
# Driver.


def _open_outputs(run, training_set, model, continued):
    """Grid (reals.png, fakes_init.png on a fresh start) and stats.jsonl/TensorBoard, on rank 0."""
    if run.rank != 0:
        return None, None
    os.makedirs(run.run_dir, exist_ok=True)
    print0(run, 'Exporting sample images...')
    # Chunks of batch_gpu on a GPU (memory, as upstream); larger on CPU, where per-call overhead dominates.
    chunk = run.batch_gpu if run.device.type == 'cuda' else max(run.batch_gpu, 128)
    grid = snapshots.ImageGrid(training_set, model.G.z_dim, run.random_seed, run.device, chunk)
    if not continued:
        grid.save_reals(run.run_dir)
        grid.save_fakes(model.G_ema, run.run_dir, '_init')
    return grid, outputs.StatsWriter(run.run_dir, time.time())


def training_loop(*, run_dir='.', training_set_kwargs=None, data_loader_kwargs=None, G_kwargs=None, D_kwargs=None,
                  G_opt_kwargs=None, D_opt_kwargs=None, augment_kwargs=None, loss_kwargs=None, metrics=(),
                  random_seed=0, num_gpus=1, rank=0, local_rank=None, batch_size=4, batch_gpu=4, ema_kimg=10,
                  ema_rampup=None, G_reg_interval=4, D_reg_interval=16, augment_p=0, ada_target=None,
                  ada_interval=4, ada_kimg=500, ada_p_max=None, total_kimg=25000, kimg_per_tick=4,
                  image_snapshot_ticks=50, network_snapshot_ticks=50, snap_kimg=(), checkpoint_ticks=None,
                  resume_pkl=None, resume_pkl_sha256=None, lr_schedule=None, lr_schedule_target='both',
                  device='auto', cudnn_benchmark=True, allow_tf32=False, print_summary=True, metric_fn=None,
                  abort_fn=None, progress_fn=None, iteration_fn=None, checkpoint_found=False):
    """Train StyleGAN2-ADA in `run_dir`, continuing from its newest readable checkpoint if it has one.

    Args (upstream's names and defaults, then ours):
        run_dir: output directory.
        training_set_kwargs, data_loader_kwargs: dataset and torch DataLoader options.
        G_kwargs, D_kwargs: network constructors (class_name + kwargs).
        G_opt_kwargs, D_opt_kwargs: Adam options with the unscaled lr and betas.
        augment_kwargs: augmentation pipe (None = no augmentation).
        loss_kwargs: the loss (class_name + kwargs).
        metrics: names of the metrics metric_fn evaluates after each network snapshot.
        random_seed, num_gpus, rank: seed; processes taking part; this one's rank.
        local_rank: device index under torchrun (None = rank).
        batch_size: images per iteration over all ranks; batch_gpu: per pass on one rank.
        ema_kimg, ema_rampup: G_ema half-life in kimg; its ramp-up (None = none).
        G_reg_interval, D_reg_interval: lazy regularisation intervals (None = with the main loss).
        augment_p: initial augmentation probability.
        ada_target, ada_interval, ada_kimg, ada_p_max: ADA target (None = fixed p), iterations
            between adjustments, kimg for p to move by 1, upper bound (None = none, as upstream).
        total_kimg, kimg_per_tick: training length; progress tick length.
        image_snapshot_ticks, network_snapshot_ticks: ticks between snapshots (None = never).
        snap_kimg: extra snapshots (and metrics) when cur_nimg first reaches these kimg.
        checkpoint_ticks: ticks between training-state checkpoints (None = network_snapshot_ticks or 50).
        resume_pkl, resume_pkl_sha256: transfer source (weights only) and its sha256 at set-up.
        lr_schedule, lr_schedule_target: schedulers dict (None = constant lr); 'g', 'd' or 'both'.
        device: 'auto', 'cpu' or 'cuda'. cudnn_benchmark, allow_tf32: backend switches.
        print_summary: print the module summary tables at start-up.
        metric_fn: (G, snapshot_pkl, cur_nimg, device) -> {name: value}, called on every rank.
        abort_fn: () -> bool, stop after the tick when True. progress_fn: (cur_kimg, total_kimg).
        iteration_fn: (model, counters, StepInfo) after each iteration (tests, diagnostics).
        checkpoint_found: the (path, meta, parts) of find_checkpoint(run_dir) when the caller
            already looked (run_training does, before log.txt opens); False = look here.

    Returns:
        Result(model, counters, state, continued).
    """
    start_time = time.time()
    device_type = distributed.resolve_device_type(device)
    run = RunConfig(run_dir=run_dir, rank=rank, num_gpus=num_gpus,
                    device=distributed.device_for(device_type, rank if local_rank is None else local_rank),
                    batch_size=batch_size, batch_gpu=batch_gpu, random_seed=random_seed, total_kimg=total_kimg,
                    kimg_per_tick=kimg_per_tick, snap_kimg=tuple(sorted(float(k) for k in snap_kimg or ())),
                    image_snapshot_ticks=image_snapshot_ticks or _NEVER,
                    network_snapshot_ticks=network_snapshot_ticks or _NEVER,
                    checkpoint_ticks=checkpoint_ticks or network_snapshot_ticks or 50, metrics=tuple(metrics or ()))
    assert batch_size % (batch_gpu * num_gpus) == 0, 'batch_size must be a multiple of batch_gpu * num_gpus'
    # Installed first: SIGTERM/SIGUSR1 during the set-up stop the run after its first step, with a checkpoint.
    with preempt.StopRequest() as stop:
        _setup_runtime(run, cudnn_benchmark, allow_tf32)
        training_set = _open_dataset(run, training_set_kwargs)
        aug = dict(p=augment_p, target=ada_target, interval=ada_interval, kimg=ada_kimg, p_max=ada_p_max)
        model = build_model(run, training_set, G_kwargs, D_kwargs, G_opt_kwargs, D_opt_kwargs, loss_kwargs or {},
                            augment_kwargs, aug=aug, ema=dict(ema_kimg=ema_kimg, ema_rampup=ema_rampup),
                            reg=dict(G=G_reg_interval, D=D_reg_interval),
                            lr_schedule=dict(schedule=lr_schedule, target=lr_schedule_target), print_summary=print_summary)
        counters = Counters()
        found = _agree_on_checkpoint(run, checkpoint_found)
        if found:
            _restore(run, model, counters, found)
        elif resume_pkl is not None:
            transfer_from_pickle(run, model, resume_pkl, resume_pkl_sha256)
        _sync_ranks(model, counters)
        hooks = ticks.Hooks(training_set_kwargs=training_set_kwargs, metric_fn=metric_fn, abort_fn=abort_fn,
                            progress_fn=progress_fn)
        return _run(run, model, counters, training_set, data_loader_kwargs or {}, hooks, iteration_fn, bool(found),
                    start_time, stop)


def _agree_on_checkpoint(run, checkpoint_found):
    """(path, meta, parts) of the checkpoint rank 0 chose (every rank loads that file), or None."""
    found = None
    if run.rank == 0:
        found = find_checkpoint(run.run_dir) if checkpoint_found is False else checkpoint_found
    path = distributed.broadcast_object(found[0] if found else None)
    if run.rank != 0 and path is not None:
        found = (path, *checkpoint.load_state(path))
    return found


def _sync_ranks(model, counters):
    """Every rank starts from rank 0's tensors and counters."""
    for module in (model.G, model.D, model.G_ema, model.augment_pipe):
        distributed.broadcast_module(module)
    counters.load_state_dict(distributed.broadcast_object(counters.state_dict()))


def _run(run, model, counters, training_set, data_loader_kwargs, hooks, iteration_fn, continued, start_time, stop):
    data_iter = _data_iterator(run, training_set, data_loader_kwargs, counters.cur_nimg)
    grid, stats_writer = _open_outputs(run, training_set, model, continued)
    print0(run, f'Training for {run.total_kimg} kimg...\n')
    state = 'interrupted'
    try:
        state = _train(run, model, counters, training_set, data_iter, grid, stats_writer, hooks, iteration_fn, stop,
                       start_time)
    finally:
        if stats_writer is not None:
            stats_writer.close()
        if run.rank == 0 and state == 'interrupted':
            try:
                outputs.write_status(run.run_dir, 'interrupted', counters, run.total_kimg, run.metrics, run.snap_kimg)
            except OSError:
                pass  # the error that stopped the run (e.g. a full disk) is the one to report
    print0(run, f'\nStopped for preemption (exit code {preempt.EXIT_PREEMPTED}).' if state == 'preempted' else
           '\nExiting...')
    return Result(model=model, counters=counters, state=state, continued=continued)


# ----------------------------------------------------------------------------
# Process entry point (spawned per rank, or called in-process).


def run_training(rank, args, metric_fn=None):
    """Rank entry point: on rank 0 find the checkpoint (cutting the logs back to it), tee output into
    <run_dir>/log.txt, then train. Returns the outcome ('finished', 'preempted', ...).
    """
    logger = None
    found = False
    if rank == 0:
        found = find_checkpoint(args['run_dir'])
        logger = dnnlib.util.Logger(file_name=os.path.join(args['run_dir'], 'log.txt'), file_mode='a')
    try:
        return training_loop(rank=rank, metric_fn=metric_fn, checkpoint_found=found, **args).state
    finally:
        if logger is not None:
            logger.close()
