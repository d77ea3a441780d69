"""Train a StyleGAN2-ADA model (thin CLI over training.options and training.training_loop).

Re-running the same command continues an unfinished run with the same options (its newest
training-state checkpoint); `--new-run` starts a fresh run instead, and `--resume <run dir>` continues
that run explicitly. `--resume <pkl|URL|ffhq512...>` is transfer learning: weights only, counters at 0.
"""

import os

import click

import dnnlib
from training import options as opt_lib

# ----------------------------------------------------------------------------
# Helpers between the CLI and the option translation.


def _fail(e):
    """OptionError -> one-line click error naming the flag (exit status 2)."""
    raise click.BadParameter(e.message, param_hint=f"'{e.flag}'")


def _resume_info(spec, allow_download):
    """Architecture of a transfer source, read from its pickle (None when there is no source).

    Args:
        spec: --resume value (preset name, path or URL).
        allow_download: False for --dry-run: URLs are inspected only if already cached.

    Returns:
        EasyDict(name, pkl, sha256, G_init_kwargs, D_init_kwargs, img_resolution) or None.
    """
    if spec is None or spec == 'noresume':
        return None
    import training.augment  # noqa: F401  (the pickle loader builds registered classes only)
    import training.networks  # noqa: F401
    from patches import network_pickle
    name = spec if spec in network_pickle.RESUME_SPECS else None
    pkl = network_pickle.RESUME_SPECS[spec] if name else spec
    if not dnnlib.util.is_url(pkl) and not os.path.isfile(pkl):
        raise opt_lib.OptionError('--resume', f'{spec}: no such file, URL, run directory or preset '
                                              f'({", ".join(sorted(network_pickle.RESUME_SPECS))})')
    info = dnnlib.EasyDict(name=name, pkl=pkl, sha256=None, G_init_kwargs=None, D_init_kwargs=None,
                           img_resolution=None)
    cached = not dnnlib.util.is_url(pkl) or os.path.isfile(dnnlib.util.url_cache_path(pkl))
    if not allow_download and not cached:
        print(f'Note: {pkl} is not downloaded yet; --dry-run shows the cfg architecture, '
              f'training will use the source network\'s architecture.')
        return info
    try:
        data = network_pickle.load_network_pkl(pkl)
    except Exception as e:  # a broken or foreign file is the user's input: name it
        raise opt_lib.OptionError('--resume', f'{spec}: cannot load network pickle: {e}') from e
    # Recorded in training_options.json (the run says exactly which weights it started from) and
    # checked again when training loads the file.
    info.sha256 = dnnlib.util.sha256_file(dnnlib.util.resolve_path_or_url(pkl))
    G, D = data.get('G_ema') or data.get('G'), data.get('D')
    info.G_init_kwargs = dict(getattr(G, 'init_kwargs', {}) or {})
    info.D_init_kwargs = dict(getattr(D, 'init_kwargs', {}) or {}) if D is not None else {}
    info.img_resolution = getattr(G, 'img_resolution', None)
    return info


def _print_summary(args, info, continuing):
    print()
    print('Training options:')
    print(opt_lib.to_json(args))
    print()
    print(f'Output directory:   {args.run_dir}' + ('  (continuing)' if continuing else ''))
    print(f'Training data:      {args.training_set_kwargs.path}')
    if args.get('resume_pkl') is not None:
        sha = args.get('resume_pkl_sha256')
        print(f'Transfer source:    {args.resume_pkl}' + (f' (sha256 {sha[:16]}...)' if sha else ''))
    print(f'Training duration:  {args.total_kimg} kimg')
    print(f'Number of GPUs:     {args.num_gpus}')
    print(f'Number of images:   {args.training_set_kwargs.max_size}')
    print(f'Image resolution:   {args.training_set_kwargs.resolution}')
    print(f'Conditional model:  {args.training_set_kwargs.use_labels}')
    print(f'Dataset x-flips:    {args.training_set_kwargs.xflip}')
    if args.get('lr_schedule') is not None:
        import schedulers
        print(f'LR schedule:        {schedulers.describe(args.lr_schedule)} (applied to {args.lr_schedule_target})')
    print()


def _continue_explicit(run_dir):
    """Options of the run directory given to --resume (continue that run as it was)."""
    args = opt_lib.read_run_options(run_dir)
    if args is None:
        raise opt_lib.OptionError('--resume', f'{run_dir}: no readable {opt_lib.OPTIONS_FILE} in this directory')
    from torch_utils import checkpoint
    if checkpoint.latest_state_path(run_dir) is None:
        raise opt_lib.OptionError('--resume', f'{run_dir}: no training-state-*.pt to continue from')
    if not checkpoint.has_unfinished_state(run_dir):
        raise opt_lib.OptionError('--resume', f'{run_dir}: this run already reached its kimg budget')
    args.run_dir = run_dir
    return args


def prepare(opts, allow_download=True):
    """Option values -> (args, continuing): training_loop kwargs with run_dir, and whether it continues.

    Raises:
        OptionError naming the flag.
    """
    resume = opts.get('resume')
    if resume is not None and os.path.isdir(resume):
        print(f'Continuing the run in {resume} (options from its {opt_lib.OPTIONS_FILE}; command-line '
              f'training options are ignored).')
        return _continue_explicit(resume), True
    if opts.get('outdir') is None:
        raise opt_lib.OptionError('--outdir', 'missing')
    from metrics import metric_main
    from torch_utils import checkpoint
    info = opt_lib.inspect_dataset(opts.get('data'))
    resume_info = _resume_info(resume, allow_download)
    desc, args = opt_lib.build_training_options(opts, dataset_info=info, resume_info=resume_info,
                                                valid_metric=metric_main.is_valid_metric)
    if not opts.get('new_run'):
        found = opt_lib.find_continuable_run(opts['outdir'], args, checkpoint.has_unfinished_state)
        if found is not None:
            print(f'Continuing the unfinished run {found} (same options). Pass --new-run to start a new run instead.')
            args.run_dir = found
            return args, True
    args.run_dir = opt_lib.next_run_dir(opts['outdir'], desc)
    return args, False


def launch(args, continuing):
    """Create the run directory (new runs), then train on every rank."""
    from torch_utils import distributed
    from training import training_loop
    if not continuing:
        os.makedirs(args.run_dir, exist_ok=False)
        dnnlib.util.atomic_write_text(os.path.join(args.run_dir, opt_lib.OPTIONS_FILE), opt_lib.to_json(args))
    device_type = distributed.resolve_device_type(args.get('device', 'auto'))
    print('Launching processes...')
    distributed.launch(training_loop.run_training, (dict(args),), args.num_gpus, device_type)


def _run_torchrun(opts):
    """torchrun: rank 0 prepares the run and broadcasts it; every rank trains."""
    from torch_utils import distributed
    from training import training_loop
    device_type = distributed.resolve_device_type(opts.get('device') or 'auto')
    env = distributed.join_torchrun(device_type)
    payload = None
    if env['rank'] == 0:
        try:
            args, continuing = prepare(opts)
            if args.num_gpus != env['world_size']:
                raise opt_lib.OptionError('--gpus', f'{args.num_gpus} does not match torchrun WORLD_SIZE {env["world_size"]}')
            _print_summary(args, None, continuing)
            if not continuing:
                os.makedirs(args.run_dir, exist_ok=False)
                dnnlib.util.atomic_write_text(os.path.join(args.run_dir, opt_lib.OPTIONS_FILE), opt_lib.to_json(args))
            payload = dict(args)
        except opt_lib.OptionError as e:
            payload = dict(error=str(e))
    payload = distributed.broadcast_object(payload)
    if 'error' in payload:
        raise click.ClickException(payload['error'])
    training_loop.run_training(env['rank'], dict(payload, local_rank=env['local_rank']))


# ----------------------------------------------------------------------------


class _CommaList(click.ParamType):
    name = 'list'

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return ','.join(s.strip() for s in str(value).split(','))


@click.command(context_settings=dict(max_content_width=100, terminal_width=100))
# General options.
@click.option('--outdir', help='Parent directory of the run directories', metavar='DIR')
@click.option('--gpus', help='Processes to train with, one per GPU; a power of two [default: 1]', type=int, metavar='INT')
@click.option('--snap', help='Ticks between image and network snapshots [default: 50]', type=int, metavar='INT')
@click.option('--metrics', help='Metrics after each network snapshot, comma-separated, or "none" [default: fid50k_full]', type=_CommaList())
@click.option('--seed', help='Seed of every random stream of the run [default: 0]', type=int, metavar='INT')
@click.option('-n', '--dry-run', help='Show the options and the run directory, then stop without writing anything', is_flag=True)
# Dataset.
@click.option('--data', help='Dataset: a directory or zip of images (dataset_tool.py layout)', metavar='PATH')
@click.option('--cond', help='Condition G and D on the labels in dataset.json [default: false]', type=bool, metavar='BOOL')
@click.option('--subset', help='Use a random subset of N images [default: all]', type=int, metavar='INT')
@click.option('--mirror', help='Add horizontally flipped copies of the images [default: false]', type=bool, metavar='BOOL')
# Base config.
@click.option('--cfg', help='Preset of batch, widths, lr, gamma, EMA [default: auto]', type=click.Choice(list(opt_lib.CFG_SPECS)))
@click.option('--gamma', help='R1 regularisation weight [default: from --cfg]', type=float)
@click.option('--kimg', help='Training length in thousands of real images [default: from --cfg]', type=int, metavar='INT')
@click.option('--batch', help='Images per iteration over all GPUs [default: from --cfg]', type=int, metavar='INT')
@click.option('--batch-gpu', help='Images per forward pass on one GPU; smaller values accumulate gradients [default: from --cfg]', type=int, metavar='INT')
@click.option('--glr', help='Generator Adam lr before lazy-regularisation scaling [default: from --cfg]', type=float)
@click.option('--dlr', help='Discriminator Adam lr before lazy-regularisation scaling [default: from --cfg]', type=float)
@click.option('--map-depth', help='Layers in the mapping network [default: from --cfg or the --resume source]', type=int, metavar='INT')
@click.option('--cbase', help='Channel base: channels at resolution r are min(cbase // r, cmax) [default: from --cfg or the --resume source]', type=int, metavar='INT')
@click.option('--cmax', help='Most channels in any layer [default: from --cfg or the --resume source]', type=int, metavar='INT')
@click.option('--ema-kimg', help='Half-life of the G_ema average in kimg [default: from --cfg]', type=float)
# LR schedule.
@click.option('--lr-schedule', help='LR schedule: preset or KIND:key=value,... (see docs/schedules.md) [default: none]', metavar='SPEC')
@click.option('--lr-schedule-target', help='Optimizers the schedule drives [default: both]', type=click.Choice(opt_lib.LR_TARGET_CHOICES))
# Discriminator augmentation.
@click.option('--aug', help='Discriminator augmentation: adaptive, fixed p, or none [default: ada]', type=click.Choice(opt_lib.AUG_CHOICES))
@click.option('--p', help='Augmentation probability (only with --aug=fixed, where it is required)', type=float)
@click.option('--target', help='Target for the overfitting heuristic r_t (only with --aug=ada) [default: 0.6]', type=float)
@click.option('--augpipe', help='Which augmentations the pipe applies [default: bgc]', type=click.Choice(opt_lib.AUGPIPE_CHOICES))
@click.option('--ada-p-max', help='Upper bound for the ADA probability p [default: none]', type=float)
@click.option('--ada-p-init', help='Initial ADA probability p (only with --aug=ada) [default: 0]', type=float)
# Transfer learning / continuing.
@click.option('--resume', help='Transfer from network pickle (preset, PATH or URL), or continue a run (RUN DIR) [default: noresume]', metavar='PKL|DIR')
@click.option('--freezed', help='Freeze this many D layers, counted from the highest resolution [default: 0]', type=int, metavar='INT')
@click.option('--new-run', help='Start a new run even if an unfinished run with the same options exists', is_flag=True)
# Snapshots, checkpoints and metrics.
@click.option('--snap-kimg', help='Also snapshot (and evaluate) when reaching these kimg, e.g. 40,60,80,100', metavar='LIST')
@click.option('--checkpoint-ticks', help='Ticks between full training-state checkpoints [default: --snap]', type=int, metavar='INT')
@click.option('--metric-data', help='Dataset for the metrics [default: training data]', metavar='PATH')
@click.option('--metric-num-gen', help='Generated images per metric (quick, small-sample metrics) [default: full]', type=int, metavar='INT')
@click.option('--tick', help='kimg per tick (for tests)', type=float, hidden=True)
# Performance options.
@click.option('--fp32', help='Train in float32 only (no fp16 layers, no clamping) [default: false]', type=bool, metavar='BOOL')
@click.option('--nhwc', help='Channels-last layout in the fp16 layers [default: false]', type=bool, metavar='BOOL')
@click.option('--nobench', help='Turn off cuDNN autotuning [default: false]', type=bool, metavar='BOOL')
@click.option('--allow-tf32', help='Let matmul and convolutions use TF32 [default: false]', type=bool, metavar='BOOL')
@click.option('--workers', help='DataLoader worker processes, 0 = load in the training process [default: 3]', type=int, metavar='INT')
@click.option('--device', help='Device type [default: auto]', type=click.Choice(opt_lib.DEVICE_CHOICES))
def main(**opts):
    """Train a StyleGAN2-ADA generator on an image dataset.

    \b
    Examples:

    \b
    # A new dataset on one GPU, presets chosen from the resolution.
    python train.py --outdir=runs --data=mydata.zip --gpus=1

    \b
    # Fine-tune the FFHQ 512 network for 100 kimg with a cyclical lr; snapshots at 40/60/80/100.
    python train.py --outdir=runs --data=data512.zip --resume=ffhq512 --cfg=stylegan2 \\
        --kimg=100 --snap-kimg=40,60,80,100 --lr-schedule=ddclr

    \b
    # Continue a stopped run: run the same command again (or pass --resume=<run dir>).

    \b
    Presets (--cfg):
      auto       derived from the resolution and --gpus (2 mapping layers, EMA ramp-up)
      stylegan2  StyleGAN2 config F (batch 32, gamma 10)
      paper256   the paper's 256x256 setting (batch 64, gamma 1, half width)
      paper512   the paper's 512x512 setting (batch 64, gamma 0.5)
      paper1024  the paper's 1024x1024 setting (batch 32, gamma 2)
      cifar      the paper's CIFAR-10 setting (batch 64, gamma 0.01, no PL, no mixing)

    \b
    --resume values:
      ffhq256, ffhq512, ffhq1024, celebahq256, lsundog256
                     NVIDIA's transfer-learning source networks (downloaded once)
      PATH or URL    any network pickle (weights only; counters start at 0)
      RUN DIR        continue that run from its newest training state
    """
    dry_run = opts.pop('dry_run')
    opts = {k: v for k, v in opts.items() if v is not None}
    for key in ('mirror', 'cond', 'fp32', 'nhwc', 'nobench', 'allow_tf32'):
        opts.setdefault(key, False)
    opts['new_run'] = bool(opts.get('new_run'))
    try:
        from torch_utils import distributed
        if distributed.torchrun_env() is not None and not dry_run:
            _run_torchrun(opts)
            return
        try:
            distributed.resolve_device_type(opts.get('device', 'auto'))
        except ValueError as e:
            raise opt_lib.OptionError('--device', str(e)) from None
        args, continuing = prepare(opts, allow_download=not dry_run)
    except opt_lib.OptionError as e:
        _fail(e)
    _print_summary(args, None, continuing)
    if dry_run:
        print('Dry run; exiting.')
        return
    launch(args, continuing)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
