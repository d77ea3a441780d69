"""Command-line values -> training_loop kwargs: cfg presets, validation, the run name.

This is the whole translation behind `train.py`, importable and testable without click. The loop
never sees flag names; this module touches the file system only to read the dataset.

Every user error raises `OptionError(flag, message)`; train.py turns it into a one-line click error
that names the flag.

As upstream: the cfg table and the `auto` rules, the key order of training_options.json, and the
run-directory name. The JSON keeps the optimizers' lr and betas unscaled; the loop applies the
lazy-regularisation ratio. Run directories themselves are training/run_dir.py.
"""

import math
import os

import dnnlib
import schedulers
from training import config

# ----------------------------------------------------------------------------
# Presets, as upstream's cfg_specs. ref_gpus=None means "the --gpus value" (auto).

CFG_SPECS = {
    #            ref_gpus  kimg     mb    mbstd  fmaps  lrate    gamma  ema   ramp   map
    'auto':      dict(ref_gpus=None, kimg=25000,  mb=None, mbstd=None, fmaps=None, lrate=None,   gamma=None, ema=None, ramp=0.05, map=2),
    'stylegan2': dict(ref_gpus=8,    kimg=25000,  mb=32,   mbstd=4,    fmaps=1,    lrate=0.002,  gamma=10,   ema=10,   ramp=None, map=8),
    'paper256':  dict(ref_gpus=8,    kimg=25000,  mb=64,   mbstd=8,    fmaps=0.5,  lrate=0.0025, gamma=1,    ema=20,   ramp=None, map=8),
    'paper512':  dict(ref_gpus=8,    kimg=25000,  mb=64,   mbstd=8,    fmaps=1,    lrate=0.0025, gamma=0.5,  ema=20,   ramp=None, map=8),
    'paper1024': dict(ref_gpus=8,    kimg=25000,  mb=32,   mbstd=4,    fmaps=1,    lrate=0.002,  gamma=2,    ema=10,   ramp=None, map=8),
    'cifar':     dict(ref_gpus=2,    kimg=100000, mb=64,   mbstd=32,   fmaps=1,    lrate=0.0025, gamma=0.01, ema=500,  ramp=0.05, map=2),
}

AUG_CHOICES = ['noaug', 'ada', 'fixed']
AUGPIPE_CHOICES = ['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc']
DEVICE_CHOICES = ['auto', 'cpu', 'cuda']
LR_TARGET_CHOICES = ['g', 'd', 'both']

# Defaults of every option, keyed by the click parameter name. None = "not given" (the preset or a
# rule decides), which matters for the run name: upstream names only the options given explicitly.
DEFAULTS = dict(
    outdir=None, data=None, gpus=1, snap=50, metrics='fid50k_full', seed=0, dry_run=False,
    cond=False, subset=None, mirror=False, cfg='auto', gamma=None, kimg=None, batch=None,
    aug=None, p=None, target=None, augpipe=None, resume=None, freezed=None,
    fp32=False, nhwc=False, allow_tf32=False, nobench=False, workers=3,
    glr=None, dlr=None, batch_gpu=None, map_depth=None, cbase=None, cmax=None, snap_kimg=None, metric_data=None,
    metric_num_gen=None, lr_schedule=None, lr_schedule_target='both', ada_p_max=None, ada_p_init=None,
    ema_kimg=None, device='auto',
    checkpoint_ticks=None, tick=4, new_run=False,
)


class OptionError(ValueError):
    """A bad command-line value: `flag` names the option ('--batch'), the message says why."""

    def __init__(self, flag, message):
        super().__init__(f'{flag}: {message}')
        self.flag = flag
        self.message = message


def _require(cond, flag, message):
    if not cond:
        raise OptionError(flag, message)


# ----------------------------------------------------------------------------
# Small parsers shared with the CLI.


def parse_metric_list(text):
    """'fid50k_full,kid50k_full' -> list; 'none' or '' -> [].

    Args:
        text: comma-separated names (or None).

    Returns:
        list of str.
    """
    if text is None or text.strip().lower() in ('', 'none'):
        return []
    return [s.strip() for s in text.split(',') if s.strip()]


def parse_kimg_list(text):
    """'40,60,80,100' -> [40, 60, 80, 100] (sorted, unique, integers > 0).

    Args:
        text: comma-separated kimg values, or None/''.

    Returns:
        list of int.

    Raises:
        OptionError naming --snap-kimg.
    """
    if text is None or str(text).strip() == '':
        return []
    points = []
    for part in str(text).split(','):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise OptionError('--snap-kimg', f'{part!r} is not a number (expected e.g. 40,60,80,100)') from None
        _require(value > 0 and value.is_integer(), '--snap-kimg', f'{part!r}: kimg points must be whole numbers > 0')
        points.append(int(value))
    return sorted(set(points))


def is_power_of_two(n):
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


# ----------------------------------------------------------------------------
# Dataset inspection (the values the cfg rules need).


def inspect_dataset(path, use_labels=True, flag='--data'):
    """Open the dataset once to read its size, resolution and labels.

    Args:
        path: dataset directory or zip.
        use_labels: read labels if present.
        flag: the option that named the dataset (for errors).

    Returns:
        EasyDict(name, num_images, resolution, num_channels, has_labels, label_dim).

    Raises:
        OptionError naming `flag`.
    """
    if path is None:
        raise OptionError(flag, 'missing (pass a dataset directory or .zip)')
    if not os.path.exists(path):
        raise OptionError(flag, f'{path}: no such file or directory')
    try:
        ds = dnnlib.util.construct_class_by_name(class_name='training.dataset.ImageFolderDataset', path=path,
                                                 use_labels=use_labels, max_size=None, xflip=False)
        info = dnnlib.EasyDict(name=ds.name, num_images=len(ds), resolution=ds.resolution,
                               num_channels=ds.num_channels, has_labels=ds.has_labels,
                               label_dim=ds.label_dim if ds.has_labels else 0)
    except OptionError:
        raise
    except Exception as e:  # any read/format problem is the user's file: say which
        raise OptionError(flag, f'{path}: cannot read dataset: {e}') from e
    finally:
        if 'ds' in locals() and hasattr(ds, 'close'):
            ds.close()
    return info


# ----------------------------------------------------------------------------
# The translation, in stages that each fill part of `args`.


def _general(o, args):
    _require(is_power_of_two(o.gpus), '--gpus', f'must be a power of two (1, 2, 4, 8, ...), got {o.gpus}')
    _require(o.snap >= 1, '--snap', f'must be at least 1, got {o.snap}')
    _require(o.seed >= 0, '--seed', 'must be >= 0')
    args.num_gpus = o.gpus
    args.image_snapshot_ticks = o.snap
    args.network_snapshot_ticks = o.snap
    args.metrics = parse_metric_list(o.metrics)
    args.random_seed = o.seed


def _check_metrics(o, args, valid_metric):
    if valid_metric is None:
        return
    for name in args.metrics:
        _require(valid_metric(name), '--metrics', f'unknown metric {name!r}')


def _dataset(o, args, info, desc_parts):
    _require(info.num_images >= 1, '--data', 'dataset has no images')
    res = info.resolution
    _require(is_power_of_two(res) and res >= 4, '--data',
             f'image resolution {res} is not a power of two >= 4 (re-export it with dataset_tool.py --resolution)')
    args.training_set_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=o.data,
                                               use_labels=True, max_size=None, xflip=False)
    args.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=o.workers, prefetch_factor=2)
    _require(o.workers >= 0, '--workers', 'must be >= 0 (0 = load in the training process)')
    if o.workers == 0:
        args.data_loader_kwargs.prefetch_factor = None  # torch requires None without worker processes
    args.training_set_kwargs.resolution = res
    args.training_set_kwargs.use_labels = info.has_labels
    args.training_set_kwargs.max_size = info.num_images
    desc_parts.append(info.name)

    if o.cond:
        _require(info.has_labels, '--cond', 'needs labels in dataset.json, but the dataset has none')
        desc_parts.append('-cond')
    else:
        args.training_set_kwargs.use_labels = False

    if o.subset is not None:
        _require(1 <= o.subset <= info.num_images, '--subset',
                 f'must be between 1 and the dataset size {info.num_images}, got {o.subset}')
        desc_parts.append(f'-subset{o.subset}')
        if o.subset < info.num_images:
            args.training_set_kwargs.max_size = o.subset
            args.training_set_kwargs.random_seed = args.random_seed

    if o.mirror:
        desc_parts.append('-mirror')
        args.training_set_kwargs.xflip = True


def _cfg_values(o, res):
    """The cfg row with `auto` filled in for this resolution and GPU count (upstream's rules)."""
    spec = dnnlib.EasyDict(CFG_SPECS[o.cfg])
    if o.cfg == 'auto':
        spec.ref_gpus = o.gpus
        spec.mb = max(min(o.gpus * min(4096 // res, 32), 64), o.gpus)
        spec.mbstd = min(spec.mb // o.gpus, 4)
        spec.fmaps = 1 if res >= 512 else 0.5
        spec.lrate = 0.002 if res >= 1024 else 0.0025
        spec.gamma = 0.0002 * (res ** 2) / spec.mb
        spec.ema = spec.mb * 10 / 32
    return spec


def _networks(o, args, spec, desc_parts):
    desc_parts.append(f'-{o.cfg}' + (str(o.gpus) if o.cfg == 'auto' else ''))
    args.G_kwargs = dnnlib.EasyDict(class_name='training.networks.Generator', z_dim=512, w_dim=512,
                                    mapping_kwargs=dnnlib.EasyDict(), synthesis_kwargs=dnnlib.EasyDict())
    args.D_kwargs = dnnlib.EasyDict(class_name='training.networks.Discriminator', block_kwargs=dnnlib.EasyDict(),
                                    mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict())
    args.G_kwargs.synthesis_kwargs.channel_base = args.D_kwargs.channel_base = int(spec.fmaps * 32768)
    args.G_kwargs.synthesis_kwargs.channel_max = args.D_kwargs.channel_max = 512
    args.G_kwargs.mapping_kwargs.num_layers = spec.map
    args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 4  # mixed precision
    args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = 256     # clamp fp16 activations
    args.D_kwargs.epilogue_kwargs.mbstd_group_size = spec.mbstd

    lr_g = spec.lrate if o.glr is None else o.glr
    lr_d = spec.lrate if o.dlr is None else o.dlr
    _require(lr_g > 0, '--glr', f'must be > 0, got {lr_g}')
    _require(lr_d > 0, '--dlr', f'must be > 0, got {lr_d}')
    args.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=lr_g, betas=[0, 0.99], eps=1e-8)
    args.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=lr_d, betas=[0, 0.99], eps=1e-8)
    args.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=spec.gamma)

    args.total_kimg = spec.kimg
    args.batch_size = spec.mb
    # Presets keep mb // ref_gpus samples per GPU pass and accumulate on fewer GPUs (as upstream).
    # With more GPUs than the preset's ref_gpus, upstream's split silently breaks; we cap it instead.
    args.batch_gpu = min(spec.mb // spec.ref_gpus, spec.mb // o.gpus) if spec.mb >= o.gpus else 1
    args.ema_kimg = spec.ema
    args.ema_rampup = spec.ramp

    if o.cfg == 'cifar':
        args.loss_kwargs.pl_weight = 0  # disable path length regularization
        args.loss_kwargs.style_mixing_prob = 0  # disable style mixing
        args.D_kwargs.architecture = 'orig'  # disable residual skip connections


def _overrides(o, args, desc_parts):
    if o.gamma is not None:
        _require(o.gamma >= 0, '--gamma', f'must be >= 0, got {o.gamma}')
        desc_parts.append(f'-gamma{o.gamma:g}')
        args.loss_kwargs.r1_gamma = o.gamma

    if o.kimg is not None:
        _require(o.kimg >= 1, '--kimg', f'must be >= 1, got {o.kimg}')
        desc_parts.append(f'-kimg{o.kimg:d}')
        args.total_kimg = o.kimg

    if o.batch is not None:
        _require(o.batch >= 1 and o.batch % o.gpus == 0, '--batch',
                 f'must be at least 1 and divisible by --gpus ({o.gpus}), got {o.batch}')
        desc_parts.append(f'-batch{o.batch}')
        args.batch_size = o.batch
        args.batch_gpu = o.batch // o.gpus

    if o.batch_gpu is not None:
        _require(o.batch_gpu >= 1, '--batch-gpu', f'must be >= 1, got {o.batch_gpu}')
        args.batch_gpu = o.batch_gpu

    if o.map_depth is not None:
        _require(o.map_depth >= 1, '--map-depth', f'must be >= 1, got {o.map_depth}')
        args.G_kwargs.mapping_kwargs.num_layers = o.map_depth

    # Network width (channels at resolution r = min(cbase // r, cmax)); small values make CPU runs
    # and quick experiments practical. Applied to G and D alike, as the presets do.
    for flag, value, key in (('--cbase', o.cbase, 'channel_base'), ('--cmax', o.cmax, 'channel_max')):
        if value is not None:
            _require(value >= 1, flag, f'must be >= 1, got {value}')
            args.G_kwargs.synthesis_kwargs[key] = args.D_kwargs[key] = value


def _check_batch(o, args):
    """Batch / GPUs / per-GPU batch / minibatch-std group must fit together (else the run fails deep inside D)."""
    b, bg, n = args.batch_size, args.batch_gpu, args.num_gpus
    flag = '--batch-gpu' if o.batch_gpu is not None else '--batch'
    _require(b % n == 0, '--batch', f'{b} is not divisible by --gpus {n}')
    _require(bg * n <= b and b % (bg * n) == 0, flag,
             f'batch {b} must be a multiple of batch_gpu ({bg}) x gpus ({n}); gradients are accumulated over '
             f'batch / (batch_gpu x gpus) rounds')
    group = args.D_kwargs.epilogue_kwargs.mbstd_group_size
    if group is not None and group > 0:
        g = min(group, bg)
        _require(bg % g == 0, flag,
                 f'batch_gpu {bg} is not divisible by the minibatch-stddev group size {g} (from --cfg={o.cfg}); '
                 f'use a per-GPU batch that is a multiple of {g}')
    pl_weight = args.loss_kwargs.get('pl_weight', 2)
    if pl_weight != 0:
        _require(bg >= 2, flag, f'batch_gpu {bg} is too small: path-length regularisation uses half the per-GPU batch')


def _augment(o, args, desc_parts):
    aug = o.aug if o.aug is not None else 'ada'
    _require(aug in AUG_CHOICES, '--aug', f'must be one of {", ".join(AUG_CHOICES)}')
    if o.aug is not None:
        desc_parts.append(f'-{aug}')
    if aug == 'ada':
        args.ada_target = 0.6
    elif aug == 'noaug':
        pass
    else:  # fixed
        _require(o.p is not None, '--p', 'is required with --aug=fixed')

    if o.p is not None:
        _require(aug == 'fixed', '--p', 'can only be given with --aug=fixed')
        _require(0 <= o.p <= 1, '--p', f'must be between 0 and 1, got {o.p}')
        desc_parts.append(f'-p{o.p:g}')
        args.augment_p = o.p

    if o.target is not None:
        _require(aug == 'ada', '--target', 'can only be given with --aug=ada')
        _require(0 <= o.target <= 1, '--target', f'must be between 0 and 1, got {o.target}')
        desc_parts.append(f'-target{o.target:g}')
        args.ada_target = o.target

    _ada_bounds(o, aug, args)
    _augpipe(o, aug, args, desc_parts)


def _ada_bounds(o, aug, args):
    if o.ada_p_max is not None:
        _require(aug == 'ada', '--ada-p-max', 'can only be given with --aug=ada')
        _require(o.ada_p_max > 0, '--ada-p-max', f'must be > 0, got {o.ada_p_max}')

    if o.ada_p_init is not None:
        # Short transfer runs end before ADA has ramped p up from 0 (at most 1.0 per ada_kimg kimg).
        _require(aug == 'ada', '--ada-p-init', 'can only be given with --aug=ada (use --p with --aug=fixed)')
        _require(0 <= o.ada_p_init <= 1, '--ada-p-init', f'must be between 0 and 1, got {o.ada_p_init}')
        _require(o.ada_p_max is None or o.ada_p_init <= o.ada_p_max, '--ada-p-init',
                 f'{o.ada_p_init} is above --ada-p-max {o.ada_p_max}')
        args.augment_p = o.ada_p_init


def _augpipe(o, aug, args, desc_parts):
    _require(o.augpipe is None or aug != 'noaug', '--augpipe', 'cannot be given with --aug=noaug')
    augpipe = o.augpipe if o.augpipe is not None else 'bgc'
    _require(augpipe in AUGPIPE_CHOICES, '--augpipe', f'must be one of {", ".join(AUGPIPE_CHOICES)}')
    if o.augpipe is not None:
        desc_parts.append(f'-{augpipe}')
    if aug != 'noaug':
        specs = _augpipe_specs()
        args.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', **specs[augpipe])


def _augpipe_specs():
    from training import augment  # late: the augment module imports torch and the ops
    return augment.augpipe_specs


def _resume(o, args, desc_parts, resume_info):
    """Transfer learning from a pickle (not continuation, which train.py handles before this)."""
    if o.resume is None or resume_info is None:
        if o.resume == 'noresume':
            desc_parts.append('-noresume')
        return
    desc_parts.append(f'-resume{resume_info.name}' if resume_info.get('name') else '-resumecustom')
    args.resume_pkl = resume_info.pkl
    if resume_info.get('sha256'):
        args.resume_pkl_sha256 = resume_info.sha256
    args.ada_kimg = 100  # make ADA react faster at the beginning
    args.ema_rampup = None  # disable EMA rampup


def _apply_source_architecture(o, args, info, resume_info):
    """Build G and D like the transfer source (a mismatched cfg would not load its weights), unless flags say otherwise."""
    if resume_info is None or resume_info.get('G_init_kwargs') is None:
        return
    src_res = resume_info.get('img_resolution')
    if src_res is not None:
        _require(src_res == info.resolution, '--resume',
                 f'the source network is {src_res}x{src_res} but the dataset (--data) is '
                 f'{info.resolution}x{info.resolution}; use a source at the dataset resolution')
    g_src, d_src = resume_info.G_init_kwargs, resume_info.get('D_init_kwargs') or {}
    for key in ('z_dim', 'w_dim'):
        if key in g_src:
            args.G_kwargs[key] = g_src[key]
    explicit = {'channel_base': o.cbase, 'channel_max': o.cmax}
    for key in ('channel_base', 'channel_max', 'num_fp16_res', 'conv_clamp'):
        if explicit.get(key) is not None:
            continue  # an explicit --cbase/--cmax wins, like --map-depth
        if key in g_src.get('synthesis_kwargs', {}):
            args.G_kwargs.synthesis_kwargs[key] = g_src['synthesis_kwargs'][key]
        if key in d_src:
            args.D_kwargs[key] = d_src[key]
    if 'num_layers' in g_src.get('mapping_kwargs', {}) and o.map_depth is None:
        args.G_kwargs.mapping_kwargs.num_layers = g_src['mapping_kwargs']['num_layers']
    if 'architecture' in d_src:
        if d_src['architecture'] == 'resnet':
            args.D_kwargs.pop('architecture', None)  # the default
        else:
            args.D_kwargs.architecture = d_src['architecture']


def _performance(o, args, desc_parts):
    if o.freezed is not None:
        _require(o.freezed >= 0, '--freezed', f'must be >= 0, got {o.freezed}')
        desc_parts.append(f'-freezed{o.freezed:d}')
        args.D_kwargs.block_kwargs.freeze_layers = o.freezed

    if o.fp32:
        args.G_kwargs.synthesis_kwargs.num_fp16_res = args.D_kwargs.num_fp16_res = 0
        args.G_kwargs.synthesis_kwargs.conv_clamp = args.D_kwargs.conv_clamp = None

    if o.nhwc:
        args.G_kwargs.synthesis_kwargs.fp16_channels_last = args.D_kwargs.block_kwargs.fp16_channels_last = True

    if o.nobench:
        args.cudnn_benchmark = False

    if o.allow_tf32:
        args.allow_tf32 = True


def _extras(o, args, info):
    """Options beyond upstream: schedules, kimg snapshots, metric data, device, checkpoints."""
    # LR schedule (a pure function of cur_nimg; the loop applies it every iteration).
    if o.lr_schedule is not None:
        try:
            sched = schedulers.parse_lr_schedule(o.lr_schedule)
        except ValueError as e:
            raise OptionError('--lr-schedule', str(e)) from None
        if schedulers.lr_at(sched, 0, 1) is not None:
            args.lr_schedule = sched
    _require(o.lr_schedule_target in LR_TARGET_CHOICES, '--lr-schedule-target',
             f'must be one of {", ".join(LR_TARGET_CHOICES)}')
    if 'lr_schedule' in args:
        args.lr_schedule_target = o.lr_schedule_target

    if o.ada_p_max is not None:
        args.ada_p_max = o.ada_p_max

    if o.ema_kimg is not None:
        _require(o.ema_kimg > 0, '--ema-kimg', f'must be > 0, got {o.ema_kimg}')
        args.ema_kimg = o.ema_kimg

    _snapshots_and_metrics(o, args, info)


def _part_classes(args):
    """The classes that build G_ema's averager and ADA's controller (recorded: swapping one is configuration)."""
    args.ema_kwargs = dnnlib.EasyDict(config.DEFAULT_EMA_KWARGS)
    args.ada_kwargs = dnnlib.EasyDict(config.DEFAULT_ADA_KWARGS)


def _snapshots_and_metrics(o, args, info):
    """kimg points, metric data and size, device, checkpoint and tick intervals."""
    # kimg snapshot points: each must be reached before training stops.
    points = parse_kimg_list(o.snap_kimg)
    if points:
        bad = [k for k in points if k > args.total_kimg]
        _require(not bad, '--snap-kimg', f'point(s) {bad} lie beyond --kimg {args.total_kimg}; they would never be reached')
        steps = [math.ceil(k * 1000 / args.batch_size) for k in points]
        _require(len(set(steps)) == len(steps), '--snap-kimg',
                 f'points {points} are closer than one batch ({args.batch_size} images) apart')
        args.snap_kimg = points

    if o.metric_data is not None:
        _require(os.path.exists(o.metric_data), '--metric-data', f'{o.metric_data}: no such file or directory')
        # A conditional G draws its metric labels from this set, so it carries labels exactly then.
        args.metric_dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset',
                                                     path=o.metric_data, use_labels=args.training_set_kwargs.use_labels,
                                                     max_size=None, xflip=False, resolution=info.resolution)
    if o.metric_num_gen is not None:
        _require(o.metric_num_gen >= 1, '--metric-num-gen', f'must be >= 1, got {o.metric_num_gen}')
        args.metric_num_gen = o.metric_num_gen

    _require(o.device in DEVICE_CHOICES, '--device', f'must be one of {", ".join(DEVICE_CHOICES)}')
    if o.device != 'auto':
        args.device = o.device

    if o.checkpoint_ticks is not None:
        _require(o.checkpoint_ticks >= 1, '--checkpoint-ticks', f'must be >= 1, got {o.checkpoint_ticks}')
        args.checkpoint_ticks = o.checkpoint_ticks

    _require(o.tick > 0, '--tick', f'must be > 0, got {o.tick}')
    if o.tick != DEFAULTS['tick']:  # the loop's default; upstream's options JSON has no such key
        args.kimg_per_tick = o.tick


def check_run_datasets(args):
    """Open the training set and the metric set of `args` as the run will, before its first step.

    The metric set must match the training set's resolution and channels (the first evaluation would
    fail otherwise, hours in), and carry labels of the same size when the model is conditional.

    Raises:
        OptionError naming --data or --metric-data.
    """
    train_kw = args.training_set_kwargs
    info = inspect_dataset(train_kw.path, flag='--data')
    _require(info.resolution == train_kw.resolution, '--data',
             f'{train_kw.path}: images are {info.resolution}x{info.resolution}, but the run trains at '
             f'{train_kw.resolution}x{train_kw.resolution}')
    _require(info.has_labels or not train_kw.use_labels, '--data', f'{train_kw.path}: the run is conditional, '
                                                                    f'but dataset.json has no labels')
    metric_kw = args.get('metric_dataset_kwargs')
    if metric_kw is None:
        return
    m = inspect_dataset(metric_kw.path, flag='--metric-data')
    _require(m.num_images >= 1, '--metric-data', f'{metric_kw.path}: the dataset has no images')
    _require(m.resolution == info.resolution, '--metric-data',
             f'{metric_kw.path}: images are {m.resolution}x{m.resolution}, but --data is '
             f'{info.resolution}x{info.resolution}; metrics compare images at the training resolution')
    _require(m.num_channels == info.num_channels, '--metric-data',
             f'{metric_kw.path}: images have {m.num_channels} channel(s), but --data has {info.num_channels}')
    if metric_kw.get('use_labels'):
        _require(m.has_labels and m.label_dim == info.label_dim, '--metric-data',
                 f'{metric_kw.path}: a conditional run needs labels of size {info.label_dim} in its dataset.json '
                 f'(found {m.label_dim if m.has_labels else "none"})')


def build_training_options(opts, dataset_info=None, resume_info=None, valid_metric=None):
    """Translate option values into (desc, training_loop kwargs).

    Args:
        opts: dict of option values keyed by click parameter name; missing keys take DEFAULTS.
        dataset_info: result of inspect_dataset(); read from opts['data'] when None.
        resume_info: for transfer learning, EasyDict(name=<preset or None>, pkl=<path/URL>,
            G_init_kwargs=..., D_init_kwargs=..., img_resolution=...) from the source pickle
            (train.py fills it; this layer does not load pickles).
        valid_metric: callable name -> bool used to check --metrics (None: not checked).

    Returns:
        (desc, args): the run-name description and an EasyDict of training_loop kwargs, keys in the
        order of upstream's training_options.json, extras last, `run_dir` not yet set.

    Raises:
        OptionError naming the flag.
    """
    o = dnnlib.EasyDict(DEFAULTS)
    o.update({k: v for k, v in opts.items() if k in DEFAULTS})
    unknown = sorted(set(opts) - set(DEFAULTS))
    assert not unknown, f'unknown option keys: {unknown}'
    _require(o.cfg in CFG_SPECS, '--cfg', f'must be one of {", ".join(CFG_SPECS)}')

    args = dnnlib.EasyDict()
    desc_parts = []
    _general(o, args)
    _check_metrics(o, args, valid_metric)
    info = dataset_info if dataset_info is not None else inspect_dataset(o.data)
    _dataset(o, args, info, desc_parts)
    spec = _cfg_values(o, info.resolution)
    _networks(o, args, spec, desc_parts)
    _overrides(o, args, desc_parts)
    _check_batch(o, args)
    _augment(o, args, desc_parts)
    _resume(o, args, desc_parts, resume_info)
    _apply_source_architecture(o, args, info, resume_info)
    _performance(o, args, desc_parts)
    _extras(o, args, info)
    _part_classes(args)
    return ''.join(desc_parts), args
