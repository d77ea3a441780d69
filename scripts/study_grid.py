"""The learning-rate study grid: 10 datasets x 8 schedules = 80 transfer-learning runs.

This module is the single source of truth for the study's runs. `scripts/run_grid.sh` (sequential)
and `scripts/slurm_grid.sh` (Slurm job array) ask it for their command lines, and `scripts/report.py`
uses its dataset/schedule tables and metric-file reader.

The study (Sugiura & Nakamura, "Descending Damped Cyclical Learning Rates") fine-tunes the FFHQ-pretrained StyleGAN2 at
512x512 on CelebAMask-HQ1..5 (1000 real faces each) and Mix-dataset1..5 (the same sets with 200 faces
replaced by Stable Diffusion images), for 100 kimg with each of the 8 learning-rate settings of its
Table 1, and measures FID (50k generated images) against the real set CelebAMask-HQk at 40, 60, 80 and
100 kimg (sections 2.1-2.5, Table 2).

Training settings and where they come from:
    --resume ffhq512          paper 2.2: FFHQ-pretrained StyleGAN2, 512x512 data (2.1)
    --kimg 100                paper 2.5.1: train until 100 kimg
    --snap-kimg 40,60,80,100  paper 2.5.3: FID at 40, 60, 80, 100 kimg
    --metrics fid50k_full,... paper 2.5.1: FID from 50k generated images against a fixed real set; the
                              grid adds prdc50k_full, memo50k_full and pull50k_full (docs/metrics.md),
                              read from the same feature pass, to say why a mixed set's FID moves
    --metric-data             paper Table 2: Mix-datasetk is compared with CelebAMask-HQk
    --lr-schedule             paper Table 1 (presets in schedulers.PRESETS; 12 cycles, paper 2.4)
    --cfg paper512            the paper's fixed lr 0.0025 is paper512's lr (cfg stylegan2 uses 0.002),
                              and paper512 builds the same architecture as the ffhq512 pickle
                              (8 mapping layers, channel_base 32768), so every tensor transfers.
The paper is silent on these; the grid uses upstream's values, written out so the command is complete:
    --batch 64 --gamma 0.5    paper512's batch size and R1 gamma
    --batch-gpu 8             paper512's per-GPU batch (64 // 8 reference GPUs): an explicit --batch
                              would otherwise put all 64 images on each GPU (batch // gpus), several
                              times upstream's memory; with fewer than 8 GPUs gradients accumulate
    --mirror 0                upstream default (no x-flips)
    --aug ada                 upstream default (ADA, target 0.6, pipe bgc)
    seed                      upstream default 0 (train.py's --seed is left at its default); with
                              --repeats R, replicate k of a cell trains with --seed=k in <preset>-seed<k>/
Paper 2.5.3 says the runs were done "in numbered order, consecutively"; we read that as the order of
execution, each run starting from the FFHQ weights (Table 2 lists each dataset with its own FID set).
"""

import dataclasses
import json
import math
import os
import re
import shlex

import click

# ----------------------------------------------------------------------------
# The grid (paper Tables 1 and 2).

REAL_PREFIX = 'CelebAMask-HQ'
MIX_PREFIX = 'Mix-dataset'
NUM_PER_GROUP = 5

# group name -> its datasets, in the paper's column order.
GROUPS = {
    REAL_PREFIX: tuple(f'{REAL_PREFIX}{k}' for k in range(1, NUM_PER_GROUP + 1)),
    MIX_PREFIX: tuple(f'{MIX_PREFIX}{k}' for k in range(1, NUM_PER_GROUP + 1)),
}
DATASETS = GROUPS[REAL_PREFIX] + GROUPS[MIX_PREFIX]

# (preset name in schedulers.PRESETS, the paper's row label), in the paper's row order.
SCHEDULES = (
    ('fixed', 'Fixed'),
    ('clr',   'CLR'),
    ('ddclr', 'DDCLR'),
    ('dclr1', 'DCLR(1)'),
    ('dclr2', 'DCLR(2)'),
    ('dclr3', 'DCLR(3)'),
    ('exp1',  'ExpLR(1)'),
    ('exp2',  'ExpLR(2)'),
)
PRESET_NAMES = tuple(name for name, _ in SCHEDULES)
PAPER_LABELS = dict(SCHEDULES)

TOTAL_KIMG = 100
SNAP_KIMG = (40, 60, 80, 100)
METRIC = 'fid50k_full'
# Every metric the runs evaluate at each point: FID first (the paper's), then why it moved.
METRICS = (METRIC, 'prdc50k_full', 'memo50k_full', 'pull50k_full')
# Generated images of a metric line without a recorded count (upstream's lines; ours at the default).
STANDARD_NUM_GEN = 50000

# Options shared by every run (see the module docstring for their sources).
COMMON_TRAIN_ARGS = (
    ('--cfg', 'paper512'),
    ('--batch', '64'),
    ('--batch-gpu', '8'),
    ('--gamma', '0.5'),
    ('--mirror', '0'),
    ('--aug', 'ada'),
    ('--resume', 'ffhq512'),
    ('--kimg', str(TOTAL_KIMG)),
    ('--snap-kimg', ','.join(str(k) for k in SNAP_KIMG)),
    ('--metrics', ','.join(METRICS)),
)


def group_of(dataset):
    """Name of the group ('CelebAMask-HQ' or 'Mix-dataset') a dataset belongs to, or None."""
    for group, names in GROUPS.items():
        if dataset in names:
            return group
    return None


def real_set_for(dataset):
    """The real set FID is measured against: CelebAMask-HQk for both CelebAMask-HQk and Mix-datasetk (Table 2)."""
    if group_of(dataset) is None:
        raise ValueError(f'{dataset!r} is not one of the study datasets')
    k = re.search(r'(\d+)$', dataset).group(1)
    return f'{REAL_PREFIX}{k}'


NUM_CELLS = len(DATASETS) * len(PRESET_NAMES)
SEED_SUFFIX = re.compile(r'^(?P<preset>.+)-seed(?P<seed>\d+)$')


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the grid: a training set, a learning-rate preset and a replicate (training seed)."""
    index: int       # position in grid(), also the Slurm array task id
    dataset: str     # e.g. 'Mix-dataset3'
    schedule: str    # preset name, e.g. 'ddclr'
    seed: int = 0    # replicate = train.py --seed

    @property
    def label(self):
        """'<dataset>/<preset>': what --only matches, the same for every replicate of a cell."""
        return f'{self.dataset}/{self.schedule}'

    @property
    def name(self):
        """Label with the replicate: 'Mix-dataset3/ddclr', 'Mix-dataset3/ddclr-seed2'."""
        return self.label + (f'-seed{self.seed}' if self.seed else '')

    @property
    def real_set(self):
        return real_set_for(self.dataset)

    def outdir(self, runs_dir):
        """train.py --outdir: one directory per run, so re-running the command continues it.

        Seed 0 keeps the single-replicate layout <dataset>/<preset>, so a grid run once is replicate 0
        of a later --repeats grid; replicate k > 0 is <dataset>/<preset>-seed<k>.
        """
        leaf = self.schedule + (f'-seed{self.seed}' if self.seed else '')
        return os.path.join(runs_dir, self.dataset, leaf)

    def command(self, data_dir, runs_dir, gpus=1, python='python', extra=(), points=None):
        """The train.py argument list for this run.

        Args:
            data_dir: Directory holding <dataset>.zip for all 10 datasets.
            runs_dir: Root of the study's run directories.
            gpus:     --gpus for train.py.
            python:   Interpreter to put in front of train.py.
            extra:    Further train.py arguments appended verbatim (they come last, so they win).
            points:   Evaluation kimg points (default SNAP_KIMG); --snap-kimg lists them and --kimg is
                      the last one, so a shrunk grid trains only as far as it evaluates.

        Returns:
            List of strings (join with shlex.join for a shell line).
        """
        points = tuple(points or SNAP_KIMG)
        args = [python, 'train.py',
                f'--outdir={self.outdir(runs_dir)}',
                f'--data={os.path.join(data_dir, self.dataset + ".zip")}',
                f'--metric-data={os.path.join(data_dir, self.real_set + ".zip")}',
                f'--lr-schedule={self.schedule}',
                f'--gpus={gpus}']
        overrides = {'--kimg': format_kimg(points[-1]), '--snap-kimg': ','.join(format_kimg(k) for k in points)}
        args += [f'{flag}={overrides.get(flag, value)}' for flag, value in COMMON_TRAIN_ARGS]
        if self.seed:
            args.append(f'--seed={self.seed}')
        return args + list(extra)


def format_kimg(k):
    """1 -> '1', 0.5 -> '0.5': a kimg point as train.py takes it."""
    return str(int(k)) if float(k).is_integer() else repr(float(k))


def grid(repeats=1):
    """All runs: replicate-major, then dataset-major in the paper's order.

    index = seed * 80 + dataset_idx * 8 + schedule_idx, so the 80 runs of replicate 0 keep the
    indices 0-79 of a single-replicate grid.
    """
    return [Run(index=r * NUM_CELLS + d * len(PRESET_NAMES) + s, dataset=dataset, schedule=schedule, seed=r)
            for r in range(repeats)
            for d, dataset in enumerate(DATASETS)
            for s, schedule in enumerate(PRESET_NAMES)]


def select(runs, only=None, index=None):
    """Filter runs by a regex searched in '<dataset>/<preset>' and/or by grid index."""
    if only is not None:
        pattern = re.compile(only)
        runs = [r for r in runs if pattern.search(r.label)]
    if index is not None:
        runs = [r for r in runs if r.index == index]
    return runs

# ----------------------------------------------------------------------------
# Reading what runs have written (shared with scripts.report).


def find_run_dirs(root):
    """Every directory under `root` (recursively, root included) that holds a training_options.json, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if 'training_options.json' in filenames:
            found.append(dirpath)
    return sorted(found)


def _line_kimg(record):
    """kimg of one metric record: its `kimg` field, else the number in its snapshot name."""
    kimg = record.get('kimg')
    if kimg is None:
        m = re.search(r'(\d+)\.pkl$', str(record.get('snapshot_pkl', '')))
        if m is None:
            return None
        return int(m.group(1))
    # Snapshots are named by cur_nimg // 1000, so a point a few images past 40 kimg is "40".
    return int(math.floor(float(kimg) + 1e-6))


def _line_value(record, metric, result_key):
    """(value, num_gen) of one metric record, or None when it holds no usable value.

    The value is results[result_key] when a key is given, else results[metric]. A line written with a
    non-standard generated-image count (`num_gen` recorded, docs/metrics.md "Fewer generated images")
    carries a relabelled key such as fid256_full instead; that key is accepted when it is the line's only
    result, so a quick FID is read but keeps its count. Lines without `num_gen` (upstream's, and ours at
    the standard count) count as STANDARD_NUM_GEN.
    """
    results = record.get('results')
    if not isinstance(results, dict):
        return None
    num_gen = record.get('num_gen')
    num_gen = STANDARD_NUM_GEN if num_gen is None else int(num_gen)
    if callable(result_key):  # picks the key from the line's results (e.g. whatever its count label)
        key = result_key(results)
        if key is None:
            return None
    elif result_key is not None:
        key = result_key
    elif metric in results:
        key = metric
    elif record.get('num_gen') is not None and len(results) == 1:
        key = next(iter(results))
    else:
        return None
    return float(results[key]), num_gen


def read_metric_series(run_dir, metric=METRIC, result_key=None):
    """Metric values of one run dir by generated-image count and kimg, from metric-<metric>.jsonl.

    A resumed run may have evaluated the same kimg twice; the last line (of the same count) wins. Lines
    that are not valid JSON (a crash mid-append) or lack the value are skipped.

    Args:
        run_dir:    A run directory.
        metric:     Metric name (file metric-<metric>.jsonl).
        result_key: Key inside `results`, or a function results -> key (None: no value); default: the
                    metric name, or the single relabelled key of a line with a recorded `num_gen`.

    Returns:
        dict num_gen (int) -> dict kimg (int) -> float; empty when the file does not exist.
    """
    path = os.path.join(run_dir, f'metric-{metric}.jsonl')
    series = {}
    if not os.path.isfile(path):
        return series
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                record = json.loads(line)
                found = _line_value(record, metric, result_key)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            kimg = _line_kimg(record) if found is not None else None
            if kimg is not None:
                value, num_gen = found
                series.setdefault(num_gen, {})[kimg] = value
    return series


def choose_series(series, points=SNAP_KIMG):
    """The one generated-image count whose values a run is judged by, so counts are never mixed.

    The count with the most of `points` wins; ties go to the larger count (less biased FID), then to
    the count with more points overall.

    Args:
        series: read_metric_series() output.
        points: The evaluation kimg points.

    Returns:
        (num_gen or None when there is no value, dict kimg -> float of that count).
    """
    if not series:
        return None, {}
    best = max(series, key=lambda n: (sum(k in series[n] for k in points), n, len(series[n])))
    return best, series[best]


def read_metric_points(run_dir, metric=METRIC, result_key=None, points=SNAP_KIMG):
    """Metric values of one run dir by kimg, all of one generated-image count (see choose_series).

    Args:
        run_dir, metric, result_key: as for read_metric_series.
        points: The evaluation kimg points that decide which count is used when lines differ.

    Returns:
        dict kimg (int) -> float, empty when the file does not exist.
    """
    return choose_series(read_metric_series(run_dir, metric, result_key), points)[1]


def parse_points(text):
    """'40,60,80,100' -> (40, 60, 80, 100): sorted, distinct, non-negative integers (ValueError otherwise)."""
    try:
        values = [int(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise ValueError(f'expected comma-separated whole kimg numbers, got {text!r}') from None
    if not values or min(values) < 0:
        raise ValueError(f'expected one or more non-negative kimg numbers, got {text!r}')
    return tuple(sorted(set(values)))


def read_status(run_dir):
    """<run_dir>/status.json (written by train.py at every checkpoint) as a dict, or None.

    None also for an unreadable or malformed file: the metric file then decides, as for runs made
    before status.json existed.
    """
    try:
        with open(os.path.join(run_dir, 'status.json'), encoding='utf-8') as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and isinstance(status.get('state'), str) else None


def _kimg_set(values):
    """Whole kimg of each recorded point (snapshots land a few images past the requested kimg)."""
    out = set()
    for v in values if isinstance(values, (list, tuple)) else []:
        try:
            out.add(int(math.floor(float(v) + 1e-6)))
        except (TypeError, ValueError):
            continue
    return out


def run_dir_progress(run_dir, metric=METRIC, points=SNAP_KIMG):
    """(finished, number of `points` evaluated, recorded state or None) of one run dir.

    With a status.json, the run's own record decides: finished when its state is 'finished', every
    point it was asked for (snap_kimg) was evaluated, and the grid's `points` are among them for
    `metric`. Without one, the metric file decides: finished when it has a value at every point.
    """
    status = read_status(run_dir)
    if status is None:
        found = read_metric_points(run_dir, metric, points=points)
        have = sum(k in found for k in points)
        return have == len(points), have, None
    evaluated = _kimg_set(status.get('evaluated_kimg'))
    if metric not in status.get('metrics', [metric]):
        evaluated = set()
    have = sum(k in evaluated for k in points)
    asked = _kimg_set(status.get('snap_kimg'))
    finished = status['state'] == 'finished' and asked <= evaluated and have == len(points)
    return finished, have, status['state']


def points_status(found, points=SNAP_KIMG):
    """'finished' when `found` (kimg -> value) has every evaluation point, else 'partial k/n'."""
    have = sum(k in found for k in points)
    return 'finished' if have == len(points) else f'partial {have}/{len(points)}'


def run_status(run, runs_dir, metric=METRIC, points=SNAP_KIMG):
    """'finished', 'partial k/n' (the most complete run dir of this run) or 'not started'."""
    outdir = run.outdir(runs_dir)
    run_dirs = find_run_dirs(outdir) if os.path.isdir(outdir) else []
    if not run_dirs:
        return 'not started'
    progress = [run_dir_progress(d, metric, points) for d in run_dirs]
    if any(finished for finished, _, _ in progress):
        return 'finished'
    return f'partial {max(have for _, have, _ in progress)}/{len(points)}'


def missing_datasets(data_dir, runs):
    """Zip files the runs need (training sets and FID real sets) that are not in data_dir, sorted."""
    needed = {name for run in runs for name in (run.dataset, run.real_set)}
    return sorted(f'{name}.zip' for name in needed if not os.path.isfile(os.path.join(data_dir, f'{name}.zip')))

# ----------------------------------------------------------------------------
# Command line (used by run_grid.sh and slurm_grid.sh).


def _selected(only, index, repeats=1):
    runs = select(grid(repeats), only=only)
    if index is not None:
        if not 0 <= index < len(grid(repeats)):
            raise click.ClickException(f'--index {index} is outside 0..{len(grid(repeats)) - 1} '
                                       f'(80 runs x --repeats {repeats})')
        runs = [r for r in runs if r.index == index]
    if not runs:
        raise click.ClickException(f'--only {only!r} / --index {index!r} matches none of the {len(grid(repeats))} runs')
    return runs


def _points_option(ctx, param, value):
    try:
        return parse_points(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param)


_only_opt = click.option('--only', metavar='REGEX', help='Keep runs whose "<dataset>/<preset>" matches REGEX.')
_index_opt = click.option('--index', type=int, help='Keep only the run with this grid index (Slurm array task id).')
_points_opt = click.option('--points', default=','.join(map(str, SNAP_KIMG)), show_default=True, metavar='KIMG,...',
                           callback=_points_option,
                           help='Evaluation points (train.py --snap-kimg; --kimg is the last one). A run is '
                                'finished when it evaluated all of them.')
_repeats_opt = click.option('--repeats', type=click.IntRange(min=1), default=1, show_default=True,
                            help='Replicates per cell: replicate k trains with --seed=k in <preset>-seed<k>/.')


@click.group()
def cli():
    """The learning-rate study grid (10 datasets x 8 schedules, times --repeats seeds)."""


@cli.command('commands')
@click.argument('data_dir')
@click.argument('runs_dir')
@click.option('--gpus', type=click.IntRange(min=1), default=1, show_default=True, help='--gpus for train.py.')
@_only_opt
@_index_opt
@_points_opt
@_repeats_opt
@click.option('--pending', is_flag=True, help='Print finished runs as "# finished: ..." comments instead of commands.')
@click.option('--python', 'python', default='python', show_default=True, help='Interpreter in the commands.')
@click.argument('extra', nargs=-1, type=click.UNPROCESSED)
def commands_cmd(data_dir, runs_dir, gpus, only, index, points, repeats, pending, python, extra):
    """Print one train.py command line per run (after `--`, EXTRA arguments are appended to each)."""
    for run in _selected(only, index, repeats):
        if pending and run_status(run, runs_dir, points=points) == 'finished':
            click.echo(f'# finished: {run.name} ({run.outdir(runs_dir)})')
            continue
        click.echo(shlex.join(run.command(data_dir, runs_dir, gpus=gpus, python=python, extra=extra, points=points)))


@cli.command('indices')
@_only_opt
@_points_opt
@_repeats_opt
@click.option('--pending-in', 'runs_dir', metavar='RUNS_DIR', help='Leave out runs already finished in RUNS_DIR.')
def indices_cmd(only, points, repeats, runs_dir):
    """Print the selected grid indices comma-separated (for sbatch --array); empty when none is left."""
    runs = _selected(only, None, repeats)
    if runs_dir is not None:
        runs = [r for r in runs if run_status(r, runs_dir, points=points) != 'finished']
    click.echo(','.join(str(run.index) for run in runs))


@cli.command('missing')
@click.argument('data_dir')
@_only_opt
def missing_cmd(data_dir, only):
    """Print the dataset zips the selected runs need that DATA_DIR lacks, one per line (exit 0)."""
    for name in missing_datasets(data_dir, _selected(only, None)):
        click.echo(name)


@cli.command('list')
@click.argument('runs_dir', required=False)
@_only_opt
@_points_opt
@_repeats_opt
def list_cmd(runs_dir, only, points, repeats):
    """Print index, dataset, preset, seed, FID real set (and status when RUNS_DIR is given)."""
    for run in _selected(only, None, repeats):
        status = f'  {run_status(run, runs_dir, points=points)}' if runs_dir else ''
        click.echo(f'{run.index:3d}  {run.dataset:<15} {run.schedule:<6} seed {run.seed}  {run.real_set}{status}')


if __name__ == '__main__':
    cli(prog_name='python -m scripts.study_grid')
