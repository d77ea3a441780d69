"""Train a StyleGAN2-ADA model (thin CLI over training.options and training.training_loop).

Re-running the same command continues an unfinished run with the same options (its newest readable
training-state checkpoint); for a finished run it says so in one line and exits 0. `--new-run` starts a
fresh run instead, and `--resume <run dir>` continues that run explicitly. `--resume <pkl|URL|ffhq512...>`
is transfer learning: weights only, counters at 0.

Exit status (dnnlib/cli.py, docs/exit-codes.md): 0 finished, 2 a bad option or input, 1 another failure
(one 'Error:' line each), 75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint (EX_TEMPFAIL: run the
same command again to continue), 130 interrupted by Ctrl-C (continues from the last checkpoint).
"""

import errno
import os

import click

import dnnlib
from dnnlib import cli
from training import options as opt_lib
from training import run_dir as run_dir_lib

EXIT_PREEMPTED = cli.EXIT_PREEMPTED  # as training.preempt's (not imported here: --help stays fast)

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
    pkl = network_pickle.resolve_resume(spec)
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


def _print_summary(args, plan):
    print()
    print('Training options:')
    print(run_dir_lib.to_json(args))
    print()
    note = {'continue': '  (continuing)', 'reuse': '  (reused: it never reached a checkpoint)'}.get(plan.kind, '')
    print(f'Output directory:   {args.run_dir}' + note)
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


# ----------------------------------------------------------------------------
# Which run directory: new, continued, reused, or already finished.


def finished_line(run_dir):
    """One line saying that run_dir is finished, with which metrics at which kimg."""
    from training import outputs
    status = outputs.read_status(run_dir) or {}
    points = ', '.join(f'{k:g}' for k in status.get('evaluated_kimg', [])) or 'the tick snapshots'
    metrics = ', '.join(status.get('metrics', [])) or 'no metrics'
    kimg = status.get('cur_kimg', status.get('total_kimg', '?'))
    return (f'{run_dir}: finished at {kimg:g} kimg ({metrics} at {points}); nothing to do. '
            f'Pass --new-run to start another run.' if isinstance(kimg, float) else
            f'{run_dir}: finished ({metrics} at {points}); nothing to do. Pass --new-run to start another run.')


def _progress_kind(run_dir, flag):
    """'none', 'continue' or 'finished' for a run dir; an unreadable state is an error naming it."""
    from torch_utils import checkpoint
    progress = checkpoint.run_progress(run_dir, verify=True)  # what the loader will find, checksums included
    if progress == 'unreadable':
        raise opt_lib.OptionError(flag, f'{run_dir}: its training-state files are all damaged; move them away '
                                        f'to start that run over, or pass --new-run')
    if progress == 'none':
        return 'none'
    return 'finished' if progress.get('finished') else 'continue'


def _release(plan):
    """Drop the lock of a plan that will not run."""
    if plan is not None and plan.lock is not None:
        plan.lock.close()


def _plan(kind, run_dir, lock=None, desc=None, flag='--outdir'):
    return dnnlib.EasyDict(kind=kind, run_dir=run_dir, lock=lock, desc=desc, flag=flag)


def _continue_explicit(run_dir):
    """--resume <run dir>: continue that run with its stored options."""
    args = run_dir_lib.read_run_options(run_dir)
    if args is None:
        raise opt_lib.OptionError('--resume', f'{run_dir}: no readable {run_dir_lib.OPTIONS_FILE} in this directory')
    kind = _progress_kind(run_dir, '--resume')
    if kind == 'none':
        raise opt_lib.OptionError('--resume', f'{run_dir}: no training-state-*.pt to continue from')
    args.run_dir = run_dir
    return args, _plan(kind, run_dir, flag='--resume')


def _previous_run(outdir, args, dry_run):
    """The newest run with the same options that no other process is training, as a plan (or None)."""
    for path in run_dir_lib.find_matching_runs(outdir, args):
        lock = run_dir_lib.try_lock(path)
        if lock is None:
            continue  # alive in another process
        try:
            kind = _progress_kind(path, '--outdir')
        except opt_lib.OptionError:
            lock.close()
            raise
        if dry_run or kind == 'finished':
            lock.close()
            lock = None
        return _plan('reuse' if kind == 'none' else kind, path, lock)
    return None


def prepare(opts, allow_download=True):
    """Option values -> (args, plan): training_loop kwargs with run_dir, and what to do with it.

    plan.kind is 'new' (run_dir is the name it will get), 'continue', 'reuse' (a run dir that never
    reached a checkpoint) or 'finished'. For 'continue'/'reuse' (not in a dry run) plan.lock holds
    the run's lock.

    Raises:
        OptionError naming the flag.
    """
    resume = opts.get('resume')
    if resume is not None and os.path.isdir(resume):
        print(f'Continuing the run in {resume} (options from its {run_dir_lib.OPTIONS_FILE}; command-line '
              f'training options are ignored).')
        return _continue_explicit(resume)
    if opts.get('outdir') is None:
        raise opt_lib.OptionError('--outdir', 'missing')
    from metrics import metric_main
    info = opt_lib.inspect_dataset(opts.get('data'))
    resume_info = _resume_info(resume, allow_download)
    desc, args = opt_lib.build_training_options(opts, dataset_info=info, resume_info=resume_info,
                                                valid_metric=metric_main.is_valid_metric)
    if not opts.get('new_run'):
        plan = _previous_run(opts['outdir'], args, dry_run=not allow_download)
        if plan is not None:
            if plan.kind == 'continue':
                print(f'Continuing the unfinished run {plan.run_dir} (same options). '
                      f'Pass --new-run to start a new run instead.')
            args.run_dir = plan.run_dir
            return args, plan
    args.run_dir = run_dir_lib.next_run_dir(opts['outdir'], desc)
    return args, _plan('new', args.run_dir, desc=desc)


def _check_output_dir(args, plan):
    """The run directory (or the folder it will be created in) must take files; checked without writing."""
    folder, flag = (args.run_dir, plan.flag) if plan.kind != 'new' else (os.path.dirname(args.run_dir), '--outdir')
    try:
        dnnlib.util.check_output_dir(folder)
    except OSError as e:
        what = 'cannot create a run directory there' if plan.kind == 'new' else 'cannot continue the run there'
        why = 'it is a file, not a directory' if e.errno == errno.ENOTDIR else e.strerror
        raise opt_lib.OptionError(flag, f'{folder}: {what}: {why}') from None


def preflight(args, plan):
    """Everything the run will need, checked before its first step; the dry run calls the same checks.

    Raises:
        OptionError naming the flag.
    """
    if plan.kind == 'finished':
        return
    opt_lib.check_run_datasets(args)
    _check_output_dir(args, plan)


# ----------------------------------------------------------------------------
# Training processes.


def make_metric_fn(metrics, dataset_kwargs, num_gen, num_gpus, rank, run_dir, training_set_kwargs=None):
    """The loop's metric callback: every metric on a snapshot's G_ema, tqdm progress on rank 0,
    results appended to metric-<name>.jsonl (training/ never imports metrics/). Memorisation and pull
    compare with `training_set_kwargs` (the training images), the others with `dataset_kwargs`."""
    from metrics import metric_main

    def evaluate(G, snapshot_pkl, cur_nimg, device):
        results, shared = {}, metric_main.SharedFeatures()  # one feature pass for all the snapshot's metrics
        for metric in metrics:
            result = metric_main.calc_metric(metric=metric, G=G, dataset_kwargs=dataset_kwargs, num_gpus=num_gpus,
                                             rank=rank, device=device, num_gen=num_gen, progress=rank == 0,
                                             shared=shared, training_set_kwargs=training_set_kwargs)
            if rank == 0:
                metric_main.report_metric(result, run_dir=run_dir, snapshot_pkl=snapshot_pkl, kimg=cur_nimg / 1e3)
            results.update(result.results)
        return results
    return evaluate


def train_rank(rank, args):
    """One rank: the metric callback from the options, then training_loop.run_training."""
    from training import training_loop
    args = dict(args)
    dataset_kwargs = args.pop('metric_dataset_kwargs', None) or args['training_set_kwargs']
    num_gen = args.pop('metric_num_gen', None)
    metric_fn = None
    if args.get('metrics'):
        metric_fn = make_metric_fn(args['metrics'], dataset_kwargs, num_gen, args.get('num_gpus', 1), rank,
                                   args['run_dir'], training_set_kwargs=args['training_set_kwargs'])
    return training_loop.run_training(rank, args, metric_fn=metric_fn)


def _claim(args, plan):
    """Create and lock the run directory of a new run (the next free id if another start took ours)."""
    outdir = os.path.dirname(args.run_dir)
    try:
        run_dir, lock = run_dir_lib.claim_new_run_dir(outdir, plan.desc,
                                                      lambda d: run_dir_lib.to_json(dict(args, run_dir=d)))
    except OSError as e:
        why = 'it is a file, not a directory' if os.path.isfile(outdir) else e.strerror or str(e)
        raise click.BadParameter(f'{outdir}: cannot create a run directory there: {why}',
                                 param_hint="'--outdir'") from None
    if run_dir != args.run_dir:
        print(f'{args.run_dir} was taken by a concurrent start; using {run_dir}.')
    args.run_dir = run_dir
    return lock


def _outcome(args, result):
    """'finished' / 'preempted' / ...: the return value in-process, status.json for spawned ranks."""
    if result is not None:
        return result
    from training import outputs
    return (outputs.read_status(args.run_dir) or {}).get('state')


def launch(args, plan):
    """Claim the run directory (new runs), then train on every rank. Returns the outcome."""
    from torch_utils import distributed
    from training import preempt
    lock = plan.lock if plan.kind != 'new' else _claim(args, plan)
    try:
        device_type = distributed.resolve_device_type(args.get('device', 'auto'))
        print('Launching processes...')
        result = distributed.launch(train_rank, (dict(args),), args.num_gpus, device_type,
                                    forward_signals=preempt.SIGNALS)
    finally:
        if lock is not None:
            lock.close()
    return _outcome(args, result)


def _run_torchrun(opts):
    """torchrun: rank 0 prepares the run and broadcasts it; every rank trains."""
    from torch_utils import distributed
    device_type = distributed.resolve_device_type(opts.get('device') or 'auto')
    env = distributed.join_torchrun(device_type)
    payload, lock = None, None
    if env['rank'] == 0:
        try:
            args, plan = prepare(opts)
            preflight(args, plan)
            if args.num_gpus != env['world_size']:
                raise opt_lib.OptionError('--gpus', f'{args.num_gpus} does not match torchrun WORLD_SIZE '
                                                    f'{env["world_size"]}')
            lock = plan.lock if plan.kind != 'new' else _claim(args, plan)
            _print_summary(args, plan)
            payload = dict(args, _plan_kind=plan.kind)
        except opt_lib.OptionError as e:
            payload = dict(error=str(e))
    payload = distributed.broadcast_object(payload)
    if 'error' in payload or payload.get('_plan_kind') == 'finished':
        distributed.leave_torchrun(all_done=True)  # every rank got the same payload
    if 'error' in payload:
        raise click.ClickException(payload['error'])
    if payload.pop('_plan_kind') == 'finished':
        return 'finished'
    all_done = False
    try:
        outcome = train_rank(env['rank'], dict(payload, local_rank=env['local_rank']))
        all_done = True
        return outcome
    finally:
        if lock is not None:
            lock.close()
        distributed.leave_torchrun(all_done)


def _train_with_one_line_errors(fn, *args):
    """Run fn; a damaged checkpoint or a write that fails (full disk, read-only) is one line, not a traceback."""
    from torch_utils import checkpoint, distributed
    try:
        return fn(*args)
    except (checkpoint.UnreadableState, distributed.RankFailed) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
            raise
        where = e.filename or 'the run directory'
        raise click.ClickException(f'{where}: {e.strerror}; the last complete checkpoint is kept: free space or '
                                   f'fix the directory, then run the same command again to continue') from None


# ----------------------------------------------------------------------------


D = opt_lib.DEFAULTS  # the CLI defaults, held once (click shows them)


class _CommaList(click.ParamType):
    name = 'list'

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return ','.join(s.strip() for s in str(value).split(','))


HELP = """Train a StyleGAN2-ADA generator on an image dataset.

\b
Examples:

\b
# A new dataset on one GPU, presets chosen from the resolution.
python train.py --outdir=runs --data=mydata.zip --gpus=1

\b
# Fine-tune the FFHQ 512 network for 100 kimg with a cyclical lr; snapshots at 40/60/80/100.
python train.py --outdir=runs --data=data512.zip --resume=ffhq512 --cfg=paper512 \\
    --kimg=100 --snap-kimg=40,60,80,100 --lr-schedule=ddclr

\b
# Continue a stopped run: run the same command again (or pass --resume=<run dir>).
# A finished run says so and exits 0; --new-run starts another.

\b
Stopping and continuing:
  SIGTERM or SIGUSR1 (e.g. sbatch --signal=USR1@120) finish the current step, write a
  checkpoint and exit with status 75 (EX_TEMPFAIL); run the same command to continue
  bit-identically. Ctrl-C stops at once; the run continues from its last checkpoint.

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


@cli.command(help=HELP, interrupted_line='Interrupted: run the same command again to continue from the last checkpoint.',
             context_settings=dict(max_content_width=100, terminal_width=100))
# General options.
@click.option('--outdir', help='Parent directory of the run directories', metavar='DIR')
@click.option('--gpus', help='Processes to train with, one per GPU; a power of two', type=int, metavar='INT', default=D['gpus'], show_default=True)
@click.option('--snap', help='Ticks between image and network snapshots', type=int, metavar='INT', default=D['snap'], show_default=True)
@click.option('--metrics', help='Metrics after each network snapshot, comma-separated, or "none"', type=_CommaList(), default=D['metrics'], show_default=True)
@click.option('--seed', help='Seed of every random stream of the run', type=int, metavar='INT', default=D['seed'], show_default=True)
@click.option('-n', '--dry-run', help='Show the options and the run directory, then stop without writing anything', is_flag=True)
# Dataset.
@click.option('--data', help='Dataset: a directory or zip of images (dataset_tool.py layout)', metavar='PATH')
@click.option('--cond', help='Condition G and D on the labels in dataset.json', type=bool, metavar='BOOL', default=D['cond'], show_default=True)
@click.option('--subset', help='Use a random subset of N images [default: all]', type=int, metavar='INT')
@click.option('--mirror', help='Add horizontally flipped copies of the images', type=bool, metavar='BOOL', default=D['mirror'], show_default=True)
# Base config.
@click.option('--cfg', help='Preset of batch, widths, lr, gamma, EMA', type=click.Choice(list(opt_lib.CFG_SPECS)), default=D['cfg'], show_default=True)
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
@click.option('--lr-schedule-target', help='Optimizers the schedule drives', type=click.Choice(opt_lib.LR_TARGET_CHOICES), default=D['lr_schedule_target'], show_default=True)
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
@click.option('--new-run', help='Start a new run even if a run with the same options exists (unfinished or finished)', is_flag=True)
# Snapshots, checkpoints and metrics.
@click.option('--snap-kimg', help='Also snapshot (and evaluate) when reaching these kimg, e.g. 40,60,80,100', metavar='LIST')
@click.option('--checkpoint-ticks', help='Ticks between full training-state checkpoints [default: --snap]', type=int, metavar='INT')
@click.option('--metric-data', help='Dataset for the metrics [default: training data]', metavar='PATH')
@click.option('--metric-num-gen', help='Generated images per metric (quick, small-sample metrics) [default: full]', type=int, metavar='INT')
@click.option('--tick', '--kimg-per-tick', 'tick', type=float, metavar='KIMG', default=D['tick'], show_default=True,
              help='kimg per tick: how often a status line, stats.jsonl row and snapshot check happen (small runs want small ticks)')
# Performance options.
@click.option('--fp32', help='Train in float32 only (no fp16 layers, no clamping)', type=bool, metavar='BOOL', default=D['fp32'], show_default=True)
@click.option('--nhwc', help='Channels-last layout in the fp16 layers', type=bool, metavar='BOOL', default=D['nhwc'], show_default=True)
@click.option('--nobench', help='Turn off cuDNN autotuning', type=bool, metavar='BOOL', default=D['nobench'], show_default=True)
@click.option('--allow-tf32', help='Let matmul and convolutions use TF32', type=bool, metavar='BOOL', default=D['allow_tf32'], show_default=True)
@click.option('--workers', help='DataLoader worker processes, 0 = load in the training process', type=int, metavar='INT', default=D['workers'], show_default=True)
@click.option('--device', help='Device type', type=click.Choice(opt_lib.DEVICE_CHOICES), default=D['device'], show_default=True)
@click.pass_context
def main(ctx, **opts):
    # --help prints HELP (above).
    dry_run = opts.pop('dry_run')
    opts = {k: v for k, v in opts.items() if v is not None}
    opts['new_run'] = bool(opts.get('new_run'))
    args, plan = _prepare_or_fail(ctx, opts, dry_run)
    if plan.kind == 'finished':
        print(finished_line(plan.run_dir))
        return
    _print_summary(args, plan)
    if dry_run:
        print('Dry run; exiting.')
        return
    outcome = _train_with_one_line_errors(launch, args, plan)
    if outcome == 'preempted':
        ctx.exit(EXIT_PREEMPTED)


def _prepare_or_fail(ctx, opts, dry_run):
    """(args, plan) after the preflight checks; under torchrun, trains here and exits. A bad option is
    one line naming the flag (exit status 2)."""
    plan = None
    try:
        from torch_utils import distributed
        if distributed.torchrun_env() is not None and not dry_run:
            outcome = _train_with_one_line_errors(_run_torchrun, opts)
            ctx.exit(EXIT_PREEMPTED if outcome == 'preempted' else 0)
        try:
            distributed.resolve_device_type(opts.get('device', 'auto'))
        except ValueError as e:
            raise opt_lib.OptionError('--device', str(e)) from None
        args, plan = prepare(opts, allow_download=not dry_run)
        preflight(args, plan)
    except opt_lib.OptionError as e:
        _release(plan)
        _fail(e)
    return args, plan


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
