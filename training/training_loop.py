"""The StyleGAN2-ADA training loop, split into set-up, phase step, tick maintenance, snapshots,
metrics and checkpoints.

All loop state lives in one `LoopState` (an EasyDict, `S` below); each function reads and updates it.
Time is counted in images (cur_nimg). Fact sheet references: §3.1 (kwargs), §3.2 (set-up), §3.3
(iteration and ticks), §3.4 (EMA, grids), §3.5 (ADA, status line, stats), §2.2 (lazy
regularisation), §2.3 (transfer).

Deliberate differences from upstream (see patches/README.md):
- Per-iteration RNG is reseeded from (seed, rank, cur_nimg), and the data order is a pure function of
  (seed, position), so continuing a run from its training-state checkpoint reproduces the
  uninterrupted run bit for bit. Metrics and snapshots do not disturb the training RNG.
- A full training state (networks, optimizers, loss state, ADA p and pending ADA statistics,
  counters, RNG) is saved every `checkpoint_ticks` ticks and found again automatically in run_dir.
- Gradients are averaged across ranks with one explicit all-reduce per phase instead of DDP.
- `snap_kimg` points end a tick and write a snapshot named by the requested kimg.
- Optional lr schedule applied every iteration: lr = lr_at(schedule, cur_nimg) * (I / (I + 1)).
- NaN/Inf gradient entries are zeroed as upstream, but counted and reported (Grads/*/nonfinite).
"""

import copy
import json
import os
import random
import time

import numpy as np
import PIL.Image
import psutil
import torch

import dnnlib
import schedulers
from torch_utils import checkpoint
from torch_utils import distributed
from torch_utils import misc
from torch_utils import training_stats
from training import augment
from training.sampler import InfiniteSampler

# ----------------------------------------------------------------------------
# Image grids (fact sheet §3.4).


def setup_snapshot_image_grid(training_set, random_seed=0):
    """Pick the reals shown in reals.png (independent of --seed, as upstream).

    Args:
        training_set: dataset.
        random_seed: seed of the grid's own RandomState.

    Returns:
        ((gw, gh), images uint8 [N, C, H, W], labels [N, c_dim]).
    """
    rnd = np.random.RandomState(random_seed)
    gw = np.clip(7680 // training_set.image_shape[2], 7, 32)
    gh = np.clip(4320 // training_set.image_shape[1], 4, 32)
    if not training_set.has_labels:
        all_indices = list(range(len(training_set)))
        rnd.shuffle(all_indices)
        grid_indices = [all_indices[i % len(all_indices)] for i in range(gw * gh)]
    else:
        # Group samples by label; row y shows label group y mod #groups.
        label_groups = dict()
        for idx in range(len(training_set)):
            key = tuple(training_set.get_details(idx).raw_label.flat[::-1])
            label_groups.setdefault(key, []).append(idx)
        label_order = sorted(label_groups.keys())
        for key in label_order:
            rnd.shuffle(label_groups[key])
        grid_indices = []
        for y in range(gh):
            indices = label_groups[label_order[y % len(label_order)]]
            grid_indices += [indices[x % len(indices)] for x in range(gw)]
            label_groups[label_order[y % len(label_order)]] = [indices[(i + gw) % len(indices)] for i in range(len(indices))]
    images, labels = zip(*[training_set[i] for i in grid_indices])
    return (int(gw), int(gh)), np.stack(images), np.stack(labels)


def save_image_grid(img, fname, drange, grid_size):
    """Tile [N, C, H, W] images into a gh x gw mosaic and write it atomically as PNG.

    Args:
        img: numpy array [gw*gh, C, H, W].
        fname: output path.
        drange: (lo, hi) value range mapped to [0, 255].
        grid_size: (gw, gh).
    """
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = (img - lo) * (255 / (hi - lo))
    img = np.rint(img).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _N, C, H, W = img.shape
    img = img.reshape(gh, gw, C, H, W).transpose(0, 3, 1, 4, 2).reshape(gh * H, gw * W, C)  # [gh*H, gw*W, C]
    assert C in (1, 3), f'cannot save {C}-channel images'
    pil = PIL.Image.fromarray(img[:, :, 0], 'L') if C == 1 else PIL.Image.fromarray(img, 'RGB')
    with dnnlib.util.atomic_open(fname, 'wb') as f:
        pil.save(f, format='PNG')


def kimg_label(kimg):
    """File-name label of a kimg point: '000040' for whole kimg, '000000.016' otherwise."""
    kimg = float(kimg)
    return f'{int(kimg):06d}' if kimg.is_integer() else f'{kimg:010.3f}'


# ----------------------------------------------------------------------------
# Set-up.


def _step_seed(random_seed, rank, cur_nimg):
    """Seed torch, numpy and python RNGs from (seed, rank, cur_nimg): a pure function of progress."""
    words = np.random.SeedSequence([int(random_seed), int(rank), int(cur_nimg)]).generate_state(2, dtype=np.uint32)
    torch.manual_seed((int(words[0]) << 32) | int(words[1]))
    np.random.seed(int(words[0]))
    random.seed(int(words[1]))


def _print0(S, *args):
    if S.rank == 0:
        print(*args, flush=True)


def _setup_runtime(S):
    S.device_type = distributed.resolve_device_type(S.cfg.device)
    S.device = distributed.device_for(S.device_type, S.rank if S.cfg.local_rank is None else S.cfg.local_rank)
    # Same initial weights on every rank (then broadcast anyway); per-rank streams from the first step.
    torch.manual_seed(S.cfg.random_seed)
    np.random.seed(S.cfg.random_seed * S.num_gpus + S.rank)
    torch.backends.cudnn.benchmark = S.cfg.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = S.cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = S.cfg.allow_tf32
    for name in ('conv2d_gradfix', 'grid_sample_gradfix'):
        try:
            module = __import__(f'torch_utils.ops.{name}', fromlist=[name])
            module.enabled = True
        except ImportError:
            pass
    if S.num_gpus > 1:
        training_stats.init_multiprocessing(rank=S.rank, sync_device=S.device if S.device_type == 'cuda' else None)


def _setup_dataset(S):
    _print0(S, 'Loading training set...')
    S.training_set = dnnlib.util.construct_class_by_name(**S.cfg.training_set_kwargs)
    _print0(S, f'Num images:  {len(S.training_set)}')
    _print0(S, f'Image shape: {list(S.training_set.image_shape)}')
    _print0(S, f'Label shape: {list(S.training_set.label_shape)}')
    _print0(S)


def _make_data_iterator(S):
    """DataLoader over an InfiniteSampler that starts at the images already seen (cur_nimg)."""
    sampler = InfiniteSampler(S.training_set, rank=S.rank, num_replicas=S.num_gpus, seed=S.cfg.random_seed,
                              start_idx=S.cur_nimg)
    kwargs = dict(S.cfg.data_loader_kwargs)
    if S.device_type != 'cuda':
        kwargs['pin_memory'] = False  # pinning needs CUDA
    if kwargs.get('num_workers', 0) == 0:
        kwargs.pop('prefetch_factor', None)
    loader = torch.utils.data.DataLoader(dataset=S.training_set, sampler=sampler,
                                         batch_size=S.batch_size // S.num_gpus, **kwargs)
    S.data_iter = iter(loader)


def _setup_networks(S):
    _print0(S, 'Constructing networks...')
    common = dict(c_dim=S.training_set.label_dim, img_resolution=S.training_set.resolution,
                  img_channels=S.training_set.num_channels)
    S.G = dnnlib.util.construct_class_by_name(**S.cfg.G_kwargs, **common).train().requires_grad_(False).to(S.device)
    S.D = dnnlib.util.construct_class_by_name(**S.cfg.D_kwargs, **common).train().requires_grad_(False).to(S.device)
    S.G_ema = copy.deepcopy(S.G).eval()
    if S.rank == 0 and S.cfg.print_summary:
        # Before any weights are loaded: the summary's forward pass updates G's w_avg.
        z = torch.empty([S.batch_gpu, S.G.z_dim], device=S.device)
        c = torch.empty([S.batch_gpu, S.G.c_dim], device=S.device)
        img = misc.print_module_summary(S.G, [z, c])
        misc.print_module_summary(S.D, [img, c])


def _setup_augment(S):
    S.augment_pipe = None
    S.ada_stats = None
    S.ada_p = float(S.cfg.augment_p)
    S.ada_carry = [0.0, 0.0]  # [count, sum] of sign(D(real)) collected at a checkpoint, not yet used
    if S.cfg.augment_kwargs is not None and (S.cfg.augment_p > 0 or S.cfg.ada_target is not None):
        S.augment_pipe = dnnlib.util.construct_class_by_name(**S.cfg.augment_kwargs)
        S.augment_pipe = S.augment_pipe.train().requires_grad_(False).to(S.device)
        S.augment_pipe.p.copy_(torch.as_tensor(S.ada_p))
        if S.cfg.ada_target is not None:
            # keep_previous=False: an interval without samples must count as empty, not repeat.
            S.ada_stats = training_stats.Collector(regex='Loss/signs/real', keep_previous=False)


def _make_optimizer(params, opt_kwargs, reg_interval):
    """Adam with lazy-regularisation scaling: lr * r, betas ** r with r = I / (I + 1) (§2.2).

    Returns:
        (optimizer, ratio, unscaled lr).
    """
    opt_kwargs = dnnlib.EasyDict(copy.deepcopy(opt_kwargs))
    ratio = 1.0 if reg_interval is None else reg_interval / (reg_interval + 1)
    base_lr = opt_kwargs.lr
    opt_kwargs.lr = base_lr * ratio
    opt_kwargs.betas = [beta ** ratio for beta in opt_kwargs.betas]
    return dnnlib.util.construct_class_by_name(params=params, **opt_kwargs), ratio, base_lr


def _setup_phases(S):
    S.loss = dnnlib.util.construct_class_by_name(device=S.device, G_mapping=S.G.mapping, G_synthesis=S.G.synthesis,
                                                 D=S.D, augment_pipe=S.augment_pipe, **S.cfg.loss_kwargs)
    S.phases = []
    S.opts = dnnlib.EasyDict()
    target = S.cfg.lr_schedule_target
    for name, module, opt_kwargs, reg_interval in [('G', S.G, S.cfg.G_opt_kwargs, S.cfg.G_reg_interval),
                                                   ('D', S.D, S.cfg.D_opt_kwargs, S.cfg.D_reg_interval)]:
        opt, ratio, base_lr = _make_optimizer(list(module.parameters()), opt_kwargs, reg_interval)
        scheduled = S.cfg.lr_schedule is not None and target in ('both', name.lower())
        S.opts[name] = dnnlib.EasyDict(opt=opt, ratio=ratio, base_lr=base_lr, scheduled=scheduled, lr=base_lr * ratio)
        if reg_interval is None:
            S.phases.append(dnnlib.EasyDict(name=name + 'both', module=module, opt_name=name, interval=1))
        else:
            S.phases.append(dnnlib.EasyDict(name=name + 'main', module=module, opt_name=name, interval=1))
            S.phases.append(dnnlib.EasyDict(name=name + 'reg', module=module, opt_name=name, interval=reg_interval))
    for phase in S.phases:
        phase.start_event = phase.end_event = None
        if S.rank == 0 and S.device_type == 'cuda':
            phase.start_event = torch.cuda.Event(enable_timing=True)
            phase.end_event = torch.cuda.Event(enable_timing=True)
        phase.ran = False


# ----------------------------------------------------------------------------
# Transfer learning (weights from a pickle, counters from zero; §2.3).


def copy_weights_by_name(src, dst):
    """Copy parameters and buffers present in both modules, by name.

    Args:
        src: source module.
        dst: destination module.

    Returns:
        EasyDict(copied=[names], missing=[names in dst absent from src], unused=[names only in src]).

    Raises:
        ValueError on a shape mismatch (architecture differs: say which tensor).
    """
    src_tensors = dict(misc.named_params_and_buffers(src))
    dst_tensors = dict(misc.named_params_and_buffers(dst))
    copied, missing = [], []
    with torch.no_grad():
        for name, tensor in dst_tensors.items():
            if name not in src_tensors:
                missing.append(name)
                continue
            value = src_tensors[name]
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f'{name}: source shape {list(value.shape)} != network shape {list(tensor.shape)}')
            tensor.copy_(value.detach().to(tensor.device, tensor.dtype))
            copied.append(name)
    unused = [name for name in src_tensors if name not in dst_tensors]
    return dnnlib.EasyDict(copied=copied, missing=missing, unused=unused)


def _transfer_from_pickle(S):
    from patches import network_pickle  # only transfer runs need the pickle loader
    local = dnnlib.util.resolve_path_or_url(S.cfg.resume_pkl)
    sha = dnnlib.util.sha256_file(local)
    if S.cfg.resume_pkl_sha256 is not None and sha != S.cfg.resume_pkl_sha256:
        raise ValueError(f'{S.cfg.resume_pkl}: sha256 {sha} differs from {S.cfg.resume_pkl_sha256} recorded when '
                         f'the run was set up; the transfer source changed')
    _print0(S, f'Resuming from "{S.cfg.resume_pkl}" (sha256 {sha})')
    data = network_pickle.load_network_pkl(local)
    for name in ('G', 'D', 'G_ema'):
        if data.get(name) is None:
            raise ValueError(f'{S.cfg.resume_pkl}: the pickle has no {name}')
        try:
            report = copy_weights_by_name(data[name], S[name])
        except ValueError as e:
            raise ValueError(f'{S.cfg.resume_pkl}: {name}.{e}') from None
        _print0(S, f'  {name}: copied {len(report.copied)} tensors; kept fresh {len(report.missing)}; '
                   f'source-only {len(report.unused)}')
        for label, names in (('kept fresh', report.missing), ('source-only', report.unused)):
            if names:
                _print0(S, f'    {label}: {", ".join(names[:8])}' + (' ...' if len(names) > 8 else ''))


# ----------------------------------------------------------------------------
# Training-state checkpoints (continue = same run; torch_utils.checkpoint).


def _state_dict(S):
    """Everything needed to continue bit-identically, as weights_only-loadable containers."""
    return dict(
        version=1,
        cur_nimg=S.cur_nimg, cur_tick=S.cur_tick, batch_idx=S.batch_idx, total_kimg=S.cfg.total_kimg,
        finished=bool(S.cur_nimg >= S.cfg.total_kimg * 1000),
        G=S.G.state_dict(), D=S.D.state_dict(), G_ema=S.G_ema.state_dict(),
        augment_pipe=S.augment_pipe.state_dict() if S.augment_pipe is not None else None,
        G_opt=S.opts.G.opt.state_dict(), D_opt=S.opts.D.opt.state_dict(),
        loss=S.loss.state_dict() if hasattr(S.loss, 'state_dict') else {},
        ada_p=float(S.ada_p), ada_carry=[float(v) for v in S.ada_carry],
        lr_schedule=json.dumps(S.cfg.lr_schedule),
        snap_kimg_done=[float(k) for k in S.snap_kimg_done],
        sampler_position=S.cur_nimg,
        rng=checkpoint.get_rng_state(),
    )


def _load_state(S, state):
    S.cur_nimg = int(state['cur_nimg'])
    S.cur_tick = int(state['cur_tick'])
    S.batch_idx = int(state['batch_idx'])
    for name in ('G', 'D', 'G_ema'):
        S[name].load_state_dict(state[name])
    if S.augment_pipe is not None and state['augment_pipe'] is not None:
        S.augment_pipe.load_state_dict(state['augment_pipe'])
    S.opts.G.opt.load_state_dict(state['G_opt'])
    S.opts.D.opt.load_state_dict(state['D_opt'])
    if hasattr(S.loss, 'load_state_dict') and state['loss']:
        S.loss.load_state_dict(state['loss'])
    S.ada_p = float(state['ada_p'])
    if S.augment_pipe is not None:
        S.augment_pipe.p.fill_(S.ada_p)
    S.ada_carry = list(state['ada_carry'])
    S.snap_kimg_done = set(state['snap_kimg_done'])
    if S.rank == 0:
        checkpoint.set_rng_state(state['rng'])


def _restore_or_transfer(S):
    """Continue from the newest training state in run_dir, else transfer from resume_pkl if given."""
    path, state = checkpoint.load_latest(S.run_dir) if S.run_dir is not None else (None, None)
    if state is not None:
        _load_state(S, state)
        S.continued = True
        _print0(S, f'Continuing the run from {path} at kimg {S.cur_nimg / 1000:.1f} (tick {S.cur_tick}).')
    elif S.cfg.resume_pkl is not None:
        _transfer_from_pickle(S)
    # Every rank starts from rank 0's tensors.
    for module in (S.G, S.D, S.G_ema, S.augment_pipe):
        distributed.broadcast_module(module)


def save_checkpoint(S):
    """Write the training state (rank 0), after collecting the pending ADA statistics (all ranks)."""
    if S.ada_stats is not None:
        # Fold the partial ADA interval into the carry so the state holds it (a collective).
        S.ada_stats.update()
        n = S.ada_stats.num('Loss/signs/real')
        if n > 0:
            S.ada_carry = [S.ada_carry[0] + n, S.ada_carry[1] + n * S.ada_stats.mean('Loss/signs/real')]
    if S.rank == 0 and S.run_dir is not None:
        path = checkpoint.save_state(S.run_dir, _state_dict(S), S.cur_nimg)
        _print0(S, f'Saved training state {os.path.basename(path)}')


# ----------------------------------------------------------------------------
# One iteration (§3.3).


def _fetch_reals(S):
    # Host time spent waiting for the loader: large values mean the input pipeline is the bottleneck.
    wait_start = time.perf_counter()
    img, c = next(S.data_iter)
    training_stats.report0('Timing/data_wait_sec', time.perf_counter() - wait_start)
    img = (img.to(S.device).to(torch.float32) / 127.5 - 1).split(S.batch_gpu)
    c = c.to(S.device).split(S.batch_gpu)
    return img, c


def _draw_latents(S):
    """Fresh z and random dataset labels for every phase (each phase its own slice, even if skipped)."""
    n = len(S.phases) * S.batch_size
    all_z = torch.randn([n, S.G.z_dim], device=S.device)
    all_z = [chunk.split(S.batch_gpu) for chunk in all_z.split(S.batch_size)]
    labels = [S.training_set.get_label(np.random.randint(len(S.training_set))) for _ in range(n)]
    all_c = torch.from_numpy(np.stack(labels))
    if S.device_type == 'cuda':
        all_c = all_c.pin_memory()
    all_c = all_c.to(S.device, non_blocking=True)
    all_c = [chunk.split(S.batch_gpu) for chunk in all_c.split(S.batch_size)]
    return all_z, all_c


def current_lr(S, name):
    """Optimizer lr for network `name` ('G'/'D') at cur_nimg, lazy-regularisation ratio included."""
    o = S.opts[name]
    if not o.scheduled:
        return o.base_lr * o.ratio
    lr = schedulers.lr_at(S.cfg.lr_schedule, S.cur_nimg, S.cfg.total_kimg * 1000, default=o.base_lr)
    return lr * o.ratio


def _apply_lr_schedule(S):
    """Set each scheduled optimizer's lr for this iteration (cheap: no optimizer rebuild)."""
    for name, o in S.opts.items():
        if o.scheduled:
            o.lr = current_lr(S, name)
            for group in o.opt.param_groups:
                group['lr'] = o.lr


def sanitise_grads(params):
    """Replace NaN/Inf gradient entries in place and count them.

    Sanitising instead of skipping the step keeps one bad fp16 batch from poisoning Adam's moments
    (as upstream); counting makes it visible instead of silent (reported per tick, see end_tick).

    Args:
        params: parameters whose `.grad` is set (after the cross-rank average, so every rank agrees).

    Returns:
        number of non-finite entries as a 0-d tensor on the gradients' device (no host sync).
    """
    count = torch.zeros([], dtype=torch.int64, device=params[0].grad.device if params else 'cpu')
    for p in params:
        count += p.grad.numel() - torch.isfinite(p.grad).sum()
        torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    return count


def _warn_nonfinite(S, stats):
    """One log line per network whose gradients held NaN/Inf during the tick (they were zeroed)."""
    for name in ('G', 'D'):
        entry = stats.get(f'Grads/{name}/nonfinite')
        total = 0 if entry is None or entry.num == 0 else round(entry.mean * entry.num)
        if total > 0:
            _print0(S, f'Warning: {total} non-finite gradient values in {name} this tick were replaced '
                       f'(NaN -> 0, Inf -> +-1e5); if this persists, lower the lr or try --fp32.')


def _run_phase(S, phase, reals, real_cs, gen_zs, gen_cs):
    """Accumulate one phase's gradients over the per-GPU rounds, average across ranks, step."""
    if phase.start_event is not None:
        phase.start_event.record(torch.cuda.current_stream(S.device))
    opt = S.opts[phase.opt_name].opt
    opt.zero_grad(set_to_none=True)
    phase.module.requires_grad_(True)
    rounds = list(zip(reals, real_cs, gen_zs, gen_cs))
    for round_idx, (real_img, real_c, gen_z, gen_c) in enumerate(rounds):
        S.loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c, gen_z=gen_z, gen_c=gen_c,
                                    sync=(round_idx == len(rounds) - 1), gain=phase.interval)
    phase.module.requires_grad_(False)
    params = [p for p in phase.module.parameters() if p.grad is not None]  # same set on every rank
    distributed.all_reduce_grads(params)
    # Gradients are identical on every rank after the average: count them once.
    training_stats.report0(f'Grads/{phase.opt_name}/nonfinite', sanitise_grads(params))
    opt.step()
    phase.ran = True
    if phase.end_event is not None:
        phase.end_event.record(torch.cuda.current_stream(S.device))


def _update_ema(S):
    """G_ema <- lerp(G, G_ema, beta), beta = 0.5 ** (batch / ema_nimg); buffers copied (§3.4)."""
    ema_nimg = S.cfg.ema_kimg * 1000
    if S.cfg.ema_rampup is not None:
        ema_nimg = min(ema_nimg, S.cur_nimg * S.cfg.ema_rampup)
    ema_beta = 0.5 ** (S.batch_size / max(ema_nimg, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(S.G_ema.parameters(), S.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, ema_beta))
        for b_ema, b in zip(S.G_ema.buffers(), S.G.buffers()):
            b_ema.copy_(b)


def _adjust_ada(S):
    """Every ada_interval iterations: p += sign(r_t - target) * step, r_t = mean sign(D(real))."""
    S.ada_stats.update()  # one small all-reduce and host read every ada_interval steps
    n = S.ada_stats.num('Loss/signs/real')
    total = S.ada_carry[1] + (n * S.ada_stats.mean('Loss/signs/real') if n > 0 else 0.0)
    count = S.ada_carry[0] + n
    S.ada_carry = [0.0, 0.0]
    sign_mean = total / count if count > 0 else float('nan')
    S.ada_p = augment.ada_adjust(S.ada_p, sign_mean, S.cfg.ada_target, S.batch_size, S.cfg.ada_interval,
                                 S.cfg.ada_kimg, p_max=S.cfg.ada_p_max)
    S.augment_pipe.p.fill_(S.ada_p)


def training_step(S):
    """One iteration: all phases due at batch_idx, EMA, counters, ADA (§3.3)."""
    _step_seed(S.cfg.random_seed, S.rank, S.cur_nimg)
    reals, real_cs = _fetch_reals(S)
    all_z, all_c = _draw_latents(S)
    _apply_lr_schedule(S)
    S.last_phases = []
    for phase, gen_zs, gen_cs in zip(S.phases, all_z, all_c):
        if S.batch_idx % phase.interval != 0:
            continue
        _run_phase(S, phase, reals, real_cs, gen_zs, gen_cs)
        S.last_phases.append(phase.name)
    _update_ema(S)
    S.step_nimg = S.cur_nimg  # images seen when this step's lr was set (for hooks)
    S.cur_nimg += S.batch_size
    S.batch_idx += 1
    if S.ada_stats is not None and S.batch_idx % S.cfg.ada_interval == 0:
        _adjust_ada(S)


# ----------------------------------------------------------------------------
# Ticks: status line, snapshots, metrics, statistics (§3.3, §3.5).


def _due_kimg_points(S):
    """snap_kimg points reached by cur_nimg and not yet snapshotted, ascending."""
    return [k for k in S.cfg.snap_kimg if k not in S.snap_kimg_done and S.cur_nimg >= k * 1000]


def tick_due(S):
    """True when this iteration ends a tick: first iteration, done, tick length, or a kimg point."""
    if S.done or S.cur_tick == 0:  # tick 0 ends after the very first iteration
        return True
    if S.cur_nimg >= S.tick_start_nimg + S.cfg.kimg_per_tick * 1000:
        return True
    return bool(_due_kimg_points(S))


def _status_line(S, tick_end_time):
    tick_time = tick_end_time - S.tick_start_time
    kimg_done = max(S.cur_nimg - S.tick_start_nimg, 1) / 1000
    cpu_gb = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu_gb = 0.0
    if S.device_type == 'cuda':
        gpu_gb = torch.cuda.max_memory_allocated(S.device) / 2**30
        torch.cuda.reset_peak_memory_stats(S.device)
    lr_g, lr_d = S.opts.G.lr, S.opts.D.lr
    fields = [
        f"tick {training_stats.report0('Progress/tick', S.cur_tick):<5d}",
        f"kimg {training_stats.report0('Progress/kimg', S.cur_nimg / 1e3):<8.1f}",
        f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', tick_end_time - S.start_time)):<12s}",
        f"sec/tick {training_stats.report0('Timing/sec_per_tick', tick_time):<7.1f}",
        f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', tick_time / kimg_done):<7.2f}",
        f"maintenance {training_stats.report0('Timing/maintenance_sec', S.maintenance_time):<6.1f}",
        f"cpumem {training_stats.report0('Resources/cpu_mem_gb', cpu_gb):<6.2f}",
        f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', gpu_gb):<6.2f}",
        f"augment {training_stats.report0('Progress/augment', S.ada_p if S.augment_pipe is not None else 0):.3f}",
        f"lrG {training_stats.report0('Progress/lr_G', lr_g):<9.3g}",
        f"lrD {training_stats.report0('Progress/lr_D', lr_d):.3g}",
    ]
    training_stats.report0('Timing/total_hours', (tick_end_time - S.start_time) / (60 * 60))
    training_stats.report0('Timing/total_days', (tick_end_time - S.start_time) / (24 * 60 * 60))
    _print0(S, ' '.join(fields))


def _make_snapshot(S):
    """CPU copies of the networks for the pickle and the metrics (the live modules are untouched)."""
    data = dict(training_set_kwargs=dict(S.cfg.training_set_kwargs))
    for name in ('G', 'D', 'G_ema', 'augment_pipe'):
        module = S[name]
        if module is not None:
            if S.num_gpus > 1:
                distributed.assert_consistent(module, name, ignore_regex=r'.*\.w_avg')
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        data[name] = module
    data['cur_nimg'] = int(S.cur_nimg)  # exact progress (snapshots at kimg points are named by the point)
    return data


def save_image_snapshot(S, label):
    """fakes<label>.png from the fixed grid latents, rendered by G_ema with constant noise."""
    if S.rank != 0:
        return
    with torch.no_grad():
        images = [S.G_ema(z=z, c=c, noise_mode='const').cpu() for z, c in zip(S.grid_z, S.grid_c)]
    save_image_grid(torch.cat(images).numpy(), os.path.join(S.run_dir, f'fakes{label}.png'),
                    drange=[-1, 1], grid_size=S.grid_size)


def save_network_snapshot(S, labels):
    """network-snapshot-<label>.pkl for each label; returns (snapshot data, first pkl path)."""
    data = _make_snapshot(S)
    paths = [os.path.join(S.run_dir, f'network-snapshot-{label}.pkl') for label in labels]
    if S.rank == 0:
        from patches import network_pickle
        for path in paths:
            network_pickle.save_network_pkl(path, data)
    return data, paths[0]


def evaluate_metrics(S, snapshot_data, snapshot_pkl):
    """Run every configured metric on the snapshot's G_ema; rank 0 appends metric-<name>.jsonl."""
    if not S.cfg.metrics:
        return
    from metrics import metric_main
    _print0(S, 'Evaluating metrics...')
    dataset_kwargs = S.cfg.metric_dataset_kwargs or S.cfg.training_set_kwargs
    for metric in S.cfg.metrics:
        result = metric_main.calc_metric(metric=metric, G=snapshot_data['G_ema'], dataset_kwargs=dataset_kwargs,
                                         num_gpus=S.num_gpus, rank=S.rank, device=S.device,
                                         num_gen=S.cfg.metric_num_gen)
        if S.rank == 0:
            metric_main.report_metric(result, run_dir=S.run_dir, snapshot_pkl=snapshot_pkl, kimg=S.cur_nimg / 1e3)
        S.metric_results.update(result.results)


def _snapshots(S):
    """Image and network snapshots due at this tick end, then metrics on the network snapshot."""
    points = _due_kimg_points(S)
    if S.run_dir is None:  # benchmarks and tests without outputs
        S.snap_kimg_done.update(points)
        return
    tick_label = f'{S.cur_nimg // 1000:06d}'
    image_due = S.done or S.cur_tick % S.cfg.image_snapshot_ticks == 0
    network_due = S.done or S.cur_tick % S.cfg.network_snapshot_ticks == 0
    labels = [kimg_label(k) for k in points]
    if image_due or points:
        for label in dict.fromkeys(([tick_label] if image_due else []) + labels):
            save_image_snapshot(S, label)
    if network_due or points:
        names = list(dict.fromkeys(labels + ([tick_label] if network_due else [])))
        data, pkl = save_network_snapshot(S, names)
        evaluate_metrics(S, data, pkl)
        del data
    S.snap_kimg_done.update(points)


def _collect_stats(S, timestamp):
    """Reduce this tick's statistics across ranks and write stats.jsonl / TensorBoard (rank 0)."""
    for phase in S.phases:
        if phase.ran and phase.start_event is not None:
            phase.end_event.synchronize()
            training_stats.report0('Timing/' + phase.name, phase.start_event.elapsed_time(phase.end_event))
    S.stats_collector.update()
    stats = S.stats_collector.as_dict()
    if S.stats_jsonl is not None:
        S.stats_jsonl.write(json.dumps(dict(stats, timestamp=timestamp)) + '\n')
        S.stats_jsonl.flush()
    if S.stats_tfevents is not None:
        global_step = int(S.cur_nimg / 1e3)
        walltime = timestamp - S.start_time
        for name, value in stats.items():
            S.stats_tfevents.add_scalar(name, value.mean, global_step=global_step, walltime=walltime)
        for name, value in S.metric_results.items():
            S.stats_tfevents.add_scalar(f'Metrics/{name}', value, global_step=global_step, walltime=walltime)
        S.stats_tfevents.flush()
    S.metric_results = dict()
    return stats


def end_tick(S):
    """Tick maintenance: status, abort check, snapshots, metrics, stats, counters, checkpoint."""
    tick_end_time = time.time()
    _status_line(S, tick_end_time)
    if not S.done and S.cfg.abort_fn is not None and S.cfg.abort_fn():
        S.done = True
        _print0(S, 'Aborting...')
    _snapshots(S)
    stats = _collect_stats(S, time.time())
    _warn_nonfinite(S, stats)
    if S.cfg.progress_fn is not None:
        S.cfg.progress_fn(S.cur_nimg // 1000, S.cfg.total_kimg)
    finished_tick = S.cur_tick
    S.cur_tick += 1
    S.tick_start_nimg = S.cur_nimg
    if S.done or finished_tick % S.cfg.checkpoint_ticks == 0:
        save_checkpoint(S)
    S.tick_start_time = time.time()
    S.maintenance_time = S.tick_start_time - tick_end_time
    return stats


# ----------------------------------------------------------------------------
# Driver.


def _open_outputs(S):
    """Grids (reals.png, fakes_init.png), stats.jsonl and TensorBoard, on rank 0."""
    S.stats_jsonl = S.stats_tfevents = None
    S.grid_size = None
    if S.rank != 0 or S.run_dir is None:
        return
    os.makedirs(S.run_dir, exist_ok=True)
    _print0(S, 'Exporting sample images...')
    S.grid_size, images, labels = setup_snapshot_image_grid(S.training_set)
    # Fixed grid latents from their own generator: the same grid after a continue.
    gen = torch.Generator().manual_seed(S.cfg.random_seed)
    # Chunks of batch_gpu on a GPU (memory, as upstream); larger on CPU, where per-call overhead dominates.
    chunk = S.batch_gpu if S.device_type == 'cuda' else max(S.batch_gpu, 128)
    S.grid_z = torch.randn([labels.shape[0], S.G.z_dim], generator=gen).to(S.device).split(chunk)
    S.grid_c = torch.from_numpy(labels).to(S.device).split(chunk)
    if not S.continued:
        save_image_grid(images, os.path.join(S.run_dir, 'reals.png'), drange=[0, 255], grid_size=S.grid_size)
        save_image_snapshot(S, '_init')
    S.stats_jsonl = open(os.path.join(S.run_dir, 'stats.jsonl'), 'at')
    try:
        import torch.utils.tensorboard as tensorboard
        S.stats_tfevents = tensorboard.SummaryWriter(S.run_dir)
    except ImportError as err:
        _print0(S, f'Skipping tfevents export (pip install tensorboard to get it): {err}')


def _close_outputs(S):
    if S.stats_jsonl is not None:
        S.stats_jsonl.close()
    if S.stats_tfevents is not None:
        S.stats_tfevents.close()


LOOP_DEFAULTS = dict(
    run_dir='.',                    # Output directory (None: write nothing; for tests).
    training_set_kwargs={},         # Options for the training set.
    data_loader_kwargs={},          # Options for torch.utils.data.DataLoader.
    G_kwargs={},                    # Options for the generator network.
    D_kwargs={},                    # Options for the discriminator network.
    G_opt_kwargs={},                # Options for the generator optimizer (unscaled lr/betas).
    D_opt_kwargs={},                # Options for the discriminator optimizer (unscaled lr/betas).
    augment_kwargs=None,            # Options for the augmentation pipeline (None = disable).
    loss_kwargs={},                 # Options for the loss.
    metrics=[],                     # Metrics to evaluate after each network snapshot.
    random_seed=0,                  # Global random seed.
    num_gpus=1,                     # Number of processes taking part.
    rank=0,                         # Rank of this process in [0, num_gpus).
    local_rank=None,                # Device index (torchrun); None = rank.
    batch_size=4,                   # Total batch size for one iteration, across all processes.
    batch_gpu=4,                    # Samples per pass on one process (gradient accumulation below batch).
    ema_kimg=10,                    # Half-life of the G_ema weights in kimg.
    ema_rampup=None,                # EMA ramp-up coefficient (None = no ramp-up).
    G_reg_interval=4,               # How often to run G regularisation (None = with the main loss).
    D_reg_interval=16,              # How often to run D regularisation (None = with the main loss).
    augment_p=0,                    # Initial augmentation probability.
    ada_target=None,                # ADA target r_t (None = fixed p).
    ada_interval=4,                 # Iterations between ADA adjustments.
    ada_kimg=500,                   # kimg for p to move by 1.
    ada_p_max=None,                 # Upper bound for ADA p (None = unbounded, as upstream).
    total_kimg=25000,               # Training length in kimg.
    kimg_per_tick=4,                # Progress snapshot interval in kimg.
    image_snapshot_ticks=50,        # Ticks between image snapshots (None = never).
    network_snapshot_ticks=50,      # Ticks between network snapshots (None = never).
    snap_kimg=[],                   # Extra snapshots (and metrics) when cur_nimg first reaches these kimg.
    checkpoint_ticks=None,          # Ticks between training-state checkpoints (None = network_snapshot_ticks).
    resume_pkl=None,                # Transfer source pickle/URL (weights only; counters start at 0).
    resume_pkl_sha256=None,         # Its sha256 when the run was set up; a different file is an error.
    lr_schedule=None,               # schedulers dict (None = constant lr).
    lr_schedule_target='both',      # 'g', 'd' or 'both': optimizers the schedule drives.
    metric_dataset_kwargs=None,     # Dataset for metrics (None = training set).
    metric_num_gen=None,            # Generated images per metric (None = the metric's full count).
    device='auto',                  # 'auto', 'cpu' or 'cuda'.
    cudnn_benchmark=True,           # Enable torch.backends.cudnn.benchmark?
    allow_tf32=False,               # Enable TF32 for matmul and convolutions?
    print_summary=True,             # Print the module summary tables at start-up?
    abort_fn=None,                  # Callable: stop training early when it returns True.
    progress_fn=None,               # Callable (cur_kimg, total_kimg) at each tick end.
    iteration_fn=None,              # Callable (loop state) after each iteration (tests, diagnostics).
)


def _init_state(kwargs):
    unknown = sorted(set(kwargs) - set(LOOP_DEFAULTS))
    if unknown:
        raise TypeError(f'training_loop() got unknown arguments: {unknown}')
    cfg = dnnlib.EasyDict(copy.deepcopy({k: v for k, v in LOOP_DEFAULTS.items() if k not in kwargs}))
    cfg.update(kwargs)
    cfg.snap_kimg = sorted(float(k) for k in (cfg.snap_kimg or []))
    if cfg.checkpoint_ticks is None:
        cfg.checkpoint_ticks = cfg.network_snapshot_ticks or 50
    cfg.image_snapshot_ticks = cfg.image_snapshot_ticks or 1 << 62
    cfg.network_snapshot_ticks = cfg.network_snapshot_ticks or 1 << 62
    assert cfg.batch_size % (cfg.batch_gpu * cfg.num_gpus) == 0, 'batch_size must be a multiple of batch_gpu * num_gpus'
    S = dnnlib.EasyDict(cfg=cfg, rank=cfg.rank, num_gpus=cfg.num_gpus, run_dir=cfg.run_dir,
                        batch_size=cfg.batch_size, batch_gpu=cfg.batch_gpu)
    S.cur_nimg = S.cur_tick = S.batch_idx = 0
    S.done = False
    S.continued = False
    S.snap_kimg_done = set()
    S.metric_results = dict()
    return S


def training_loop(**kwargs):
    """Train StyleGAN2-ADA; keyword arguments and defaults in LOOP_DEFAULTS (upstream's plus extras).

    Returns:
        the loop state (networks under .G/.D/.G_ema, counters), for tests and tools.
    """
    S = _init_state(kwargs)
    S.start_time = time.time()
    _setup_runtime(S)
    _setup_dataset(S)
    _setup_networks(S)
    _setup_augment(S)
    _setup_phases(S)
    _restore_or_transfer(S)
    _make_data_iterator(S)
    _open_outputs(S)
    S.stats_collector = training_stats.Collector(regex='.*')
    S.tick_start_nimg = S.cur_nimg
    S.tick_start_time = time.time()
    S.maintenance_time = S.tick_start_time - S.start_time
    S.done = S.cur_nimg >= S.cfg.total_kimg * 1000
    _print0(S, f'Training for {S.cfg.total_kimg} kimg...\n')
    try:
        while not S.done:
            training_step(S)
            S.done = S.cur_nimg >= S.cfg.total_kimg * 1000
            if S.cfg.iteration_fn is not None:
                S.cfg.iteration_fn(S)
            if tick_due(S):
                end_tick(S)
    finally:
        _close_outputs(S)
    _print0(S, '\nExiting...')
    return S


# ----------------------------------------------------------------------------
# Process entry point (spawned per rank, or called in-process).


def run_training(rank, args, log_file=True):
    """Rank entry point: tee rank 0's output into <run_dir>/log.txt, then train.

    Args:
        rank: process rank.
        args: training_loop kwargs (with run_dir).
        log_file: append rank 0's stdout/stderr to log.txt.
    """
    logger = None
    if rank == 0 and log_file and args.get('run_dir'):
        logger = dnnlib.util.Logger(file_name=os.path.join(args['run_dir'], 'log.txt'), file_mode='a')
    try:
        training_loop(rank=rank, **args)
    finally:
        if logger is not None:
            logger.close()
