"""The StyleGAN2-ADA training loop: set-up, one iteration, tick ends, checkpoints.

The functions take the frozen RunConfig (`run`) and one mutable TrainingState (`state`: the trained
objects, counters and tick clock; training/state.py). What a checkpoint holds is the state's registry
of named objects with state_dict()/load_state_dict(), read by save and load alike. The options and
their defaults are training/config.py's LoopOptions; each part is built from its `*_kwargs`.

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
from torch_utils.distributed import print0
from training import config
from training import outputs
from training import phases as phase_lib
from training import preempt
from training import snapshots
from training import ticks
from training.counters import Counters
from training.model import Model, build_model, transfer_from_pickle
from training.sampler import InfiniteSampler
from training.state import new_state


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


def _open_dataset(training_set_kwargs):
    print0('Loading training set...')
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    print0(f'Num images:  {len(training_set)}')
    print0(f'Image shape: {list(training_set.image_shape)}')
    print0(f'Label shape: {list(training_set.label_shape)}\n')
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


@dataclasses.dataclass(frozen=True)
class Latest:
    """The newest readable checkpoint of a run dir (path None: the run has none)."""
    path: str = None
    meta: dict = None
    parts: dict = None

    @property
    def found(self):
        return self.path is not None


def find_checkpoint(run_dir):
    """The newest readable checkpoint of run_dir as a Latest; cuts the logs back to it.

    Stale temp files of a killed writer are removed first. A run dir that has state files but none
    readable raises checkpoint.UnreadableState (one line naming the files): never start over silently.
    """
    checkpoint.remove_stale_temp_files(run_dir)
    path, meta, parts = checkpoint.load_latest(run_dir)
    changed = outputs.roll_back_appended(run_dir, meta.get('outputs', {}) if meta else {})
    if changed:
        print(f'Cut {", ".join(changed)} back to the checkpoint {os.path.basename(path) if path else "(none)"}.')
    return Latest(path, meta, parts)


def _agree_on_checkpoint(run, latest):
    """The Latest that rank 0 chose (every rank loads that file); rank 0 looks itself when `latest` is None."""
    if run.rank == 0 and latest is None:
        latest = find_checkpoint(run.run_dir)
    path = distributed.broadcast_object(latest.path if run.rank == 0 else None)
    if run.rank != 0:
        latest = Latest(path, *checkpoint.load_state(path)) if path is not None else Latest()
    return latest


def _restore(run, state, latest):
    """Load every registered part of the checkpoint into the state."""
    state.checkpointed.load(latest.parts)
    print0(f'Continuing the run from {latest.path} at kimg {state.counters.cur_nimg / 1000:.3f} '
           f'(tick {state.counters.cur_tick}).')


def _sync_ranks(state):
    """Every rank starts from rank 0's tensors and counters."""
    model = state.model
    for module in (model.G, model.D, model.G_ema, model.augment_pipe):
        distributed.broadcast_module(module)
    state.counters.load_state_dict(distributed.broadcast_object(state.counters.state_dict()))


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


def training_step(run, state, training_set, data_iter):
    """One iteration: the phases due at batch_idx, EMA, counters, ADA. Returns a StepInfo."""
    model, counters = state.model, state.counters
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
    counters.advance(run.batch_size)
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


def _train(run, state, data, grid, stats_writer, hooks, stop):
    """Iterate until the budget, an abort or a stop request; returns the outcome."""
    state.clock.begin_training()
    out = ticks.TickOutputs(grid=grid, stats_writer=stats_writer, collector=training_stats.Collector(regex='.*'),
                            hooks=hooks)
    if state.counters.cur_nimg >= run.total_nimg:
        return 'finished'
    while True:
        step = training_step(run, state, *data)
        done = state.counters.cur_nimg >= run.total_nimg
        if hooks.iteration_fn is not None:
            hooks.iteration_fn(state.model, state.counters, step)
        preempted = not done and _stop_requested(run, stop, state.counters.batch_idx)
        if preempted:
            print0(f'Received {stop.received or "a stop request"}: writing a checkpoint and stopping.')
        if ticks.tick_due(run, state.counters, done) or preempted:
            outcome = ticks.end_tick(run, state, out, step, done, preempted)
            if outcome is not None:
                return outcome
        else:
            ticks.progress_line(state)


# ----------------------------------------------------------------------------
# Driver.


def _open_outputs(run, training_set, model, continued):
    """Grid (reals.png, fakes_init.png on a fresh start) and stats.jsonl/TensorBoard, on rank 0."""
    if run.rank != 0:
        return None, None
    os.makedirs(run.run_dir, exist_ok=True)
    print0('Exporting sample images...')
    # Chunks of batch_gpu on a GPU (memory, as upstream); larger on CPU, where per-call overhead dominates.
    chunk = run.batch_gpu if run.device.type == 'cuda' else max(run.batch_gpu, 128)
    grid = snapshots.ImageGrid(training_set, model.G.z_dim, run.random_seed, run.device, chunk)
    if not continued:
        grid.save_reals(run.run_dir)
        grid.save_fakes(model.G_ema, run.run_dir, '_init')
    return grid, outputs.StatsWriter(run.run_dir, time.time())


def training_loop(*, metric_fn=None, abort_fn=None, progress_fn=None, iteration_fn=None, latest=None, **options):
    """Train StyleGAN2-ADA in run_dir, continuing from its newest readable checkpoint if it has one.

    Args:
        **options: the LoopOptions keys (training/config.py lists each with its default and meaning),
            as training_options.json holds them; an unknown key is a TypeError.
        metric_fn: (G, snapshot_pkl, cur_nimg, device) -> {name: value}, called on every rank.
        abort_fn: () -> bool, stop after the tick when True. progress_fn: (cur_kimg, total_kimg).
        iteration_fn: (model, counters, StepInfo) after each iteration (tests, diagnostics).
        latest: find_checkpoint(run_dir) when rank 0's caller already looked (run_training does, before
            log.txt opens); None = rank 0 looks here.

    Returns:
        Result(model, counters, state, continued).
    """
    start_time = time.time()
    opts = config.LoopOptions(**options)
    device_type = distributed.resolve_device_type(opts.device)
    run = config.run_config(opts, distributed.device_for(device_type, opts.rank if opts.local_rank is None
                                                         else opts.local_rank))
    hooks = ticks.Hooks(metric_fn=metric_fn, abort_fn=abort_fn, progress_fn=progress_fn, iteration_fn=iteration_fn)
    # Installed first: SIGTERM/SIGUSR1 during the set-up stop the run after its first step, with a checkpoint.
    with preempt.StopRequest() as stop:
        state, training_set, continued = _set_up(run, opts, latest, start_time)
        return _run(run, state, (training_set, opts.data_loader_kwargs or {}), hooks, continued, stop)


def _set_up(run, opts, latest, start_time):
    """Runtime switches, dataset, the trained parts, then the checkpoint or transfer source; returns
    (TrainingState, training set, whether the run continues)."""
    _setup_runtime(run, opts.cudnn_benchmark, opts.allow_tf32)
    training_set = _open_dataset(opts.training_set_kwargs)
    state = new_state(build_model(run, training_set, opts, opts.print_summary), run.rank, start_time)
    latest = _agree_on_checkpoint(run, latest)
    if latest.found:
        _restore(run, state, latest)
    elif opts.resume_pkl is not None:
        transfer_from_pickle(run, state.model, opts.resume_pkl, opts.resume_pkl_sha256)
    _sync_ranks(state)
    return state, training_set, latest.found


def _run(run, state, data_source, hooks, continued, stop):
    """Data iterator and outputs, then the iterations; status.json says 'interrupted' if they raise."""
    training_set, data_loader_kwargs = data_source
    data_iter = _data_iterator(run, training_set, data_loader_kwargs, state.counters.cur_nimg)
    grid, stats_writer = _open_outputs(run, training_set, state.model, continued)
    print0(f'Training for {run.total_kimg} kimg...\n')
    outcome = 'interrupted'
    try:
        outcome = _train(run, state, (training_set, data_iter), grid, stats_writer, hooks, stop)
    finally:
        if stats_writer is not None:
            stats_writer.close()
        if run.rank == 0 and outcome == 'interrupted':
            try:
                outputs.write_status(run.run_dir, 'interrupted', state.counters, run.total_kimg, run.metrics,
                                     run.snap_kimg)
            except OSError:
                pass  # the error that stopped the run (e.g. a full disk) is the one to report
    print0(f'\nStopped for preemption (exit code {preempt.EXIT_PREEMPTED}).' if outcome == 'preempted' else
           '\nExiting...')
    return Result(model=state.model, counters=state.counters, state=outcome, continued=continued)


# ----------------------------------------------------------------------------
# Process entry point (spawned per rank, or called in-process).


def run_training(rank, args, metric_fn=None):
    """Rank entry point: on rank 0 find the checkpoint (cutting the logs back to it), tee output into
    <run_dir>/log.txt, then train. Returns the outcome ('finished', 'preempted', ...).
    """
    logger = latest = None
    if rank == 0:
        latest = find_checkpoint(args['run_dir'])
        logger = dnnlib.util.Logger(file_name=os.path.join(args['run_dir'], 'log.txt'), file_mode='a')
    try:
        return training_loop(rank=rank, metric_fn=metric_fn, latest=latest, **args).state
    finally:
        if logger is not None:
            logger.close()
