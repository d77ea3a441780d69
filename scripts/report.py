"""Tables, statistics and figures of the learning-rate study from a directory of finished (or running) runs.

    python -m scripts.report RUNS_DIR --out DIR [--metric fid50k_full] [--points 40,60,80,100] [--no-plots]
                             [--compare-paper]

Finds every run dir under RUNS_DIR (a directory with training_options.json), identifies its dataset
(basename of training_set_kwargs.path), lr schedule (the preset recorded in training_options.json) and
replicate (its recorded random_seed, else a '<preset>-seed<k>' directory, else 0), reads
metric-<metric>.jsonl, and writes into DIR (with the default evaluation points 40,60,80,100;
--points changes them, and the last point replaces 100 in the names):

    report.md, report.html    all tables, paired comparisons, rankings, run status, notes and figures
                              (the HTML page is self-contained: figures embedded as PNG)
    table3_fid100_CelebAMask-HQ.csv, table4_fid100_Mix-dataset.csv
                              FID at the last point, 100 kimg (paper Tables 3 and 4)
    table5_fidmin_CelebAMask-HQ.csv, table6_fidmin_Mix-dataset.csv
                              minimum FID over all points (paper Tables 5 and 6)
    cells.csv                 every table cell: mean, sd and count over seeds, recorded interval, marks
    paired.csv                every schedule against DDCLR per table (Wilcoxon signed-rank, sign test)
    points.csv                every metric point: dataset, schedule, seed, kimg, value, interval, run dir
    summary.json              the same numbers, statuses and notes, machine-readable
    figure5_fid_Mix-dataset.png  FID against kimg on the Mix datasets for the five schedules of the
                              paper's Figure 5 (DDCLR, DCLR(3), DCLR(1), Fixed, CLR), with bands
    fid_curves_CelebAMask-HQ.png, fid_curves_Mix-dataset.png   the same for all 8 schedules
    lr_curves.png             lr against kimg of the 8 presets (paper Figures 1-4)

A figure without any data is not written. --compare-paper prints the paper's Tables 3-6
(scripts/paper_tables.json) beside ours with the difference per cell, and adds them to the report.

Tables follow the paper: rows are the 8 schedules, columns the 5 datasets of a group plus their mean,
values with 3 decimals (with replicates: the mean over seeds, shown as mean ± sd). Marking (paper
section 3: bold = the best two of each column, double underline = the worst two; Markdown has no
double underline, so <u>x</u>): **x** for the two lowest values of a column, <u>x</u> for the two
highest, ranked on unrounded values (ties share a rank, so a tie can mark three cells). A column is
marked only when it has at least 4 values. A run that does not exist shows 'missing'; a run without
the needed points shows 'partial k/n'. Neither enters a mean: the mean is then taken over the
datasets present, printed with a '*', and left out of the mean column's marking.

Generated-image count: a metric line evaluated with fewer images than 50,000 (train.py
--metric-num-gen, calc_metrics.py --num-gen) carries `num_gen` and a relabelled key (fid256_full);
such values are used, and the report says from how many images they are. Within one run only lines of
one count are used (study_grid.choose_series: the count covering most points, ties to the larger);
runs of different counts are flagged in the header and notes.
"""

import collections
import csv
import io
import json
import os
import re
import zipfile

import click

import dnnlib
from scripts import paper_compare, report_figures, report_html, report_stats, study_grid as sg

# Paper Figure 5: the schedules drawn for the Mix datasets.
FIGURE5_SCHEDULES = ('ddclr', 'dclr3', 'dclr1', 'fixed', 'clr')
MIN_VALUES_TO_MARK = 4
MEAN = 'mean'

# ----------------------------------------------------------------------------
# Identifying runs.


def dataset_of(options, run_dir):
    """Dataset name: basename of training_set_kwargs.path without extension; else a grid name in the path."""
    path = (options.get('training_set_kwargs') or {}).get('path')
    if path:
        name = os.path.basename(os.path.normpath(str(path)))
        return os.path.splitext(name)[0] if name.lower().endswith('.zip') else name
    parts = os.path.normpath(run_dir).split(os.sep)
    return next((p for p in reversed(parts) if p in sg.DATASETS), None)


def _flatten_schedule(d):
    """{'func_name', 'kwargs': {...}} or flat -> flat {'func_name', **kwargs}, without naming keys."""
    flat = {k: v for k, v in d.items() if k not in ('kwargs', 'preset', 'spec', 'name', 'preset_name')}
    if isinstance(d.get('kwargs'), dict):
        flat.update(d['kwargs'])
    return flat


def _preset_from_string(text):
    text = text.strip()
    if text in sg.PRESET_NAMES:
        return text
    try:
        import schedulers
        return schedulers.preset_name(schedulers.parse_lr_schedule(text))
    except (ImportError, ValueError):
        return None


def schedule_of(options, run_dir):
    """Identify the lr preset of a run.

    Looks, in order, at the preset name / spec string recorded in training_options.json, then at the
    schedule dict itself (compared with every preset through schedulers.preset_name), then at a path
    component named like a preset (the grid's RUNS_DIR/<dataset>/<preset>/ layout).

    Returns:
        (preset name or None, how it was found: 'recorded name', 'recorded schedule', 'directory').
    """
    recorded = options.get('lr_schedule')
    strings = [recorded] if isinstance(recorded, str) else []
    if isinstance(recorded, dict):
        strings += [recorded.get(k) for k in ('preset', 'preset_name', 'name', 'spec')]
    strings += [options.get(k) for k in ('lr_schedule_preset', 'lr_schedule_spec', 'lr_schedule_name')]
    for text in strings:
        name = _preset_from_string(text) if isinstance(text, str) else None
        if name:
            return name, 'recorded name'
    if isinstance(recorded, dict):
        try:
            import schedulers
            name = schedulers.preset_name(_flatten_schedule(recorded))
        except (ImportError, ValueError):
            name = None
        if name in sg.PRESET_NAMES:
            return name, 'recorded schedule'
    parts = os.path.normpath(run_dir).split(os.sep)
    name = next((p for p in reversed(parts) if p in sg.PRESET_NAMES), None)
    return name, ('directory' if name else None)


def seed_of(options, run_dir):
    """Replicate (training seed) of a run: training_options.json's random_seed, else a '-seed<k>' directory, else 0."""
    seed = options.get('random_seed')
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    for part in reversed(os.path.normpath(run_dir).split(os.sep)):
        m = sg.SEED_SUFFIX.match(part)
        if m and m.group('preset') in sg.PRESET_NAMES:
            return int(m.group('seed'))
    return 0


def read_intervals(run_dir, metric, num_gen, result_key=None):
    """kimg -> (ci95 lo, hi) of the run's metric lines of one generated-image count that carry an interval
    (the line's only interval, or with a callable result_key the interval of the key it picks)."""
    path = os.path.join(run_dir, f'metric-{metric}.jsonl')
    out = {}
    if num_gen is None or not os.path.isfile(path):
        return out
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                record = json.loads(line)
                count = record.get('num_gen') or sg.STANDARD_NUM_GEN
                unc = record.get('uncertainty') or {}
                if callable(result_key):
                    unc = {k: v for k, v in unc.items() if k == result_key(record['results'])}
                (interval,) = [u['ci95'] for u in unc.values()]
                kimg = sg._line_kimg(record)
                if int(count) == num_gen and kimg is not None:
                    out[kimg] = (float(interval[0]), float(interval[1]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return out


def _read_run(run_dir, metric, points, notes, result_key=None):
    """One run dir as a record dict, or None (noted) when it is not a grid run."""
    try:
        with open(os.path.join(run_dir, 'training_options.json'), encoding='utf-8') as f:
            options = json.load(f)
    except (OSError, ValueError) as err:
        notes['unrecognised'].append(f'{run_dir}: unreadable training_options.json ({err})')
        return None
    dataset = dataset_of(options, run_dir)
    preset, found_by = schedule_of(options, run_dir)
    if dataset not in sg.DATASETS or preset is None:
        notes['unrecognised'].append(f'{run_dir}: dataset {dataset!r}, schedule {preset!r}')
        return None
    series = sg.read_metric_series(run_dir, metric, result_key)
    num_gen, found = sg.choose_series(series, points)
    if len(series) > 1:
        counts = ', '.join(f'{n:,} ({len(series[n])} points)' for n in sorted(series, reverse=True))
        notes['mixed_counts'].append(f'{run_dir}: lines from {counts}; used only the {num_gen:,}-image lines')
    return dict(run_dir=run_dir, dataset=dataset, preset=preset, seed=seed_of(options, run_dir), points=found,
                num_gen=num_gen, found_by=found_by, intervals=read_intervals(run_dir, metric, num_gen, result_key))


def collect_runs(runs_dir, metric=sg.METRIC, points=sg.SNAP_KIMG, result_key=None):
    """Read every run dir under runs_dir.

    Args:
        runs_dir: Directory searched recursively for run dirs.
        metric:   Metric name (file metric-<metric>.jsonl).
        points:   Evaluation kimg points (decide duplicates and which generated-image count is used).
        result_key: as for study_grid.read_metric_series (default: the metric's own value).

    Returns:
        (cells, notes): cells maps (dataset, preset) -> list of replicate records sorted by seed, each
        dict(run_dir, dataset, preset, seed, points, num_gen, found_by, intervals), where num_gen is the
        generated-image count of the values used (None without values) and intervals maps kimg to the
        recorded 95% interval; notes is a dict of lists: 'unrecognised' (run dirs outside the grid),
        'duplicates' (several run dirs for one cell and seed: the one with the most evaluation points
        is used, ties go to the later directory) and 'mixed_counts' (runs whose lines differ in
        generated-image count: only one count is used).
    """
    by_seed, notes = {}, {'unrecognised': [], 'duplicates': [], 'mixed_counts': []}
    for run_dir in sg.find_run_dirs(runs_dir):
        record = _read_run(run_dir, metric, points, notes, result_key)
        if record is None:
            continue
        key = (record['dataset'], record['preset'], record['seed'])
        previous = by_seed.get(key)
        if previous is not None:
            seed_text = f' seed {key[2]}' if key[2] else ''
            notes['duplicates'].append(f'{key[0]}/{key[1]}{seed_text}: {previous["run_dir"]} and {run_dir}')
            if _coverage(record, points) < _coverage(previous, points):
                continue
        by_seed[key] = record
    cells = {}
    for (dataset, preset, _seed), record in sorted(by_seed.items()):
        cells.setdefault((dataset, preset), []).append(record)
    return cells, notes


def _coverage(record, points):
    """(evaluation points present, points overall) of a run record: which duplicate run dir to keep."""
    return sum(k in record['points'] for k in points), len(record['points'])


parse_points = sg.parse_points

# ----------------------------------------------------------------------------
# Why FID moved: the Inception-space metrics the grid evaluates beside it (docs/metrics.md).

WHY_QUANTITIES = (  # (metric, result key suffix, what it is)
    ('pull50k_full', 'nn', 'pull: share of samples whose nearest training image is generated'),
    ('pull50k_full', 'base', 'pull baseline: generated share of the training set'),
    ('pull50k_full', 'fid_generated', 'FID to the generated part of the training set'),
    ('pull50k_full', 'fid_real', 'FID to the real part of the training set'),
    ('pull50k_full', 'probe', 'probe: share of samples a real-vs-generated probe calls generated'),
    ('memo50k_full', '', 'memorised share (nearest / second-nearest training distance < 1/3)'),
    ('memo50k_full', 'nn_ratio', 'median nearest training distance / training leave-one-out median'),
    ('prdc50k_full', 'precision', 'precision (Inception space, k = 3)'),
    ('prdc50k_full', 'recall', 'recall (Inception space, k = 3)'),
    ('prdc50k_full', 'density', 'density (k = 5)'),
    ('prdc50k_full', 'coverage', 'coverage (k = 5)'),
)
MEMO_PANEL_SIZE = 8


def why_key(metric, suffix):
    """results -> the line's key of (metric, suffix) whatever its generated-image count (memo50k_full_nn_ratio,
    memo5k_full_nn_ratio, ...), or None."""
    pattern = re.compile(rf'^{metric.split("50k")[0]}\d+k?_full' + (rf'_{suffix}$' if suffix else '$'))
    return lambda results: next((k for k in results if pattern.match(k)), None)


def _why_table(cells, group, points):
    """Markdown rows: schedule x point, mean ± sd over the group's runs (datasets and seeds)."""
    lines = ['| schedule | ' + ' | '.join(f'{k} kimg' for k in points) + ' |', '|---|' + '---:|' * len(points)]
    for preset in sg.PRESET_NAMES:
        texts = []
        for k in points:
            mean, sd, n = report_stats.group_point(cells, sg.GROUPS[group], preset, k)
            texts.append('–' if mean is None else f'{mean:.3f}' + (f' ± {sd:.3f}' if sd is not None else '') + f' (n={n})')
        lines.append(f'| {sg.PAPER_LABELS[preset]} | ' + ' | '.join(texts) + ' |')
    return lines


def why_sections(runs_dir, out_dir, points, plots):
    """(markdown lines, figures [(name, bytes or None)], summary dict) of the why-FID-moved metrics."""
    md, summary, figures, pull_cells = [], {}, [], None
    for metric, suffix, label in WHY_QUANTITIES:
        cells, _ = collect_runs(runs_dir, metric, points, why_key(metric, suffix))
        if not any(r['points'] for rs in cells.values() for r in rs):
            continue
        name = f'{metric}_{suffix}' if suffix else metric
        md += [f'### {label} (`{name}`)', '']
        summary[name] = {}
        for group in sg.GROUPS:
            if not any(r['points'] for (d, _), rs in cells.items() if d in sg.GROUPS[group] for r in rs):
                continue
            table = build_table(cells, group, 'last', points)
            paired = report_stats.paired_summary(table)
            md += [f'{group}: mean ± sd over runs (datasets x seeds)', ''] + _why_table(cells, group, points) + ['']
            md.append(paired_markdown(name, f'{label}, {group}, {points[-1]} kimg', paired, quantity=name))
            summary[name][group] = dict(paired=paired, table=_json_tables({name: table})[name])
        if (metric, suffix) == ('pull50k_full', 'nn'):
            pull_cells = cells
    if plots and pull_cells is not None:
        path = os.path.join(out_dir, 'pull_Mix-dataset.png')
        figures.append(('pull_Mix-dataset.png', report_figures.plot_fid_curves(
            pull_cells, sg.MIX_PREFIX, sg.PRESET_NAMES, path, 'share nearest to a generated image',
            'Pull towards the generated part (line: mean over seeds; band: ±1 sd, or one run\'s 95% interval)')))
    return (['## Why FID moved: fidelity, diversity, memorisation, pull', ''] + md) if md else [], figures, summary


def most_memorised(runs_dir, points, count=MEMO_PANEL_SIZE):
    """The `count` generated images with the smallest nearest-distance ratios at the last point over all runs.

    Returns:
        list of dict(run_dir, dataset, kimg, gen_index, train_index, ratio, distance, seed, image (PNG bytes of
        the nearest training image, or None when its zip cannot be read here)).
    """
    found = []
    for run_dir in sg.find_run_dirs(runs_dir):
        path = os.path.join(run_dir, 'metric-memo50k_full.jsonl')
        if not os.path.isfile(path):
            continue
        try:
            with open(os.path.join(run_dir, 'training_options.json'), encoding='utf-8') as f:
                data = (json.load(f).get('training_set_kwargs') or {}).get('path')
        except (OSError, ValueError):
            data = None
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    record = json.loads(line)
                    if sg._line_kimg(record) != points[-1]:
                        continue
                    details = record['details']
                    found += [dict(t, run_dir=run_dir, kimg=points[-1], seed=details.get('seed'), data=data)
                              for t in details['top']]
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
    found.sort(key=lambda t: (t['ratio'], t['distance']))
    out = found[:count]
    for t in out:
        data = t.pop('data')
        t['dataset'] = os.path.splitext(os.path.basename(str(data)))[0]
        t['image'] = training_image(data, t['train_index'])
    return out


def memorised_markdown(memorised, out_dir):
    """A table of the most memorised samples (report.html shows their nearest training images)."""
    if not memorised:
        return []
    md = ['## Most memorised generated images', '',
          f'The {len(memorised)} generated images with the smallest nearest / second-nearest training distance ratio at '
          f'the last point, over all runs (report.html shows each one\'s nearest training image).', '',
          '| run | kimg | generated image | nearest training image | ratio | distance |', '|---|---:|---:|---:|---:|---:|']
    md += [f'| {os.path.relpath(t["run_dir"], out_dir)} | {t["kimg"]} | {t["gen_index"]} | {t["dataset"]} #{t["train_index"]} | '
           f'{t["ratio"]:.3f} | {t["distance"]:.2f} |' for t in memorised]
    return md + ['']


def training_image(zip_path, index):
    """Bytes of item `index` of a dataset zip (images in sorted name order, as the dataset class reads
    them), or None when the zip cannot be read here."""
    try:
        with zipfile.ZipFile(str(zip_path)) as zf:
            extensions = dnnlib.util.image_extensions()
            names = sorted(n for n in zf.namelist() if dnnlib.util.is_image_name(n, extensions))
            return zf.read(names[index])
    except (OSError, zipfile.BadZipFile, IndexError, TypeError):
        return None


# ----------------------------------------------------------------------------
# Tables.


def _run_value(record, kind, points):
    """(value or None, status) of one replicate (kind, points: see cell_value)."""
    found = record['points']
    have = sum(k in found for k in points)
    partial = f'partial {have}/{len(points)}'
    if kind == 'last':
        return (found[points[-1]], 'ok') if points[-1] in found else (None, partial)
    if have < len(points):
        return None, partial
    return min(found[k] for k in points), 'ok'


def _run_interval(record, kind, points):
    """The recorded 95% interval of a replicate's table value (the point it came from), or None."""
    found = record['points']
    if kind == 'last':
        return record['intervals'].get(points[-1])
    best = min(points, key=lambda k: found[k])
    return record['intervals'].get(best)


def cell_value(records, kind, points=sg.SNAP_KIMG):
    """One table cell from the replicates of a grid cell.

    Args:
        records: collect_runs() replicate records of the cell (empty or None for a missing run).
        kind:    'last' (value at the last evaluation point; paper Tables 3/4) or 'min' (minimum over
                 all evaluation points, which must all be present; paper Tables 5/6).
        points:  Evaluation kimg points, sorted.

    Returns:
        dict(value (mean over the replicates with a value, or None), status ('ok', 'missing' or the
        most complete replicate's 'partial k/n'), sd (over seeds, None below 2), n, per_seed
        (seed -> value), ci95 (the recorded interval of a single replicate, else None), mark=None).
    """
    if not records:
        return dict(value=None, status='missing', sd=None, n=0, per_seed={}, ci95=None, mark=None)
    per_seed, statuses = {}, []
    for record in records:
        value, status = _run_value(record, kind, points)
        if value is None:
            statuses.append(status)
        else:
            per_seed[record['seed']] = value
    if not per_seed:
        status = max(statuses, key=lambda t: int(t.split()[1].split('/')[0]))
        return dict(value=None, status=status, sd=None, n=0, per_seed={}, ci95=None, mark=None)
    mean, sd = report_stats.mean_sd(list(per_seed.values()))
    ok = [r for r in records if r['seed'] in per_seed]
    ci95 = _run_interval(ok[0], kind, points) if len(ok) == 1 else None
    return dict(value=mean, status='ok', sd=sd, n=len(per_seed), per_seed=per_seed, ci95=ci95, mark=None)


def rank_marks(values):
    """Marks for one column: 'best' for the two lowest, 'worst' for the two highest, else None.

    A value counts as among the best two when fewer than two values are strictly lower (so ties share
    a mark). None entries are skipped. With fewer than MIN_VALUES_TO_MARK values nothing is marked,
    since best and worst would overlap.
    """
    present = [v for v in values if v is not None]
    marks = [None] * len(values)
    if len(present) < MIN_VALUES_TO_MARK:
        return marks
    for i, v in enumerate(values):
        if v is None:
            continue
        if sum(u < v for u in present) < 2:
            marks[i] = 'best'
        elif sum(u > v for u in present) < 2:
            marks[i] = 'worst'
    return marks


def _mean_cell(row_cells):
    """The row mean over the datasets present; its sd over seeds when every dataset has the same >= 2 seeds."""
    present = [c for c in row_cells if c['value'] is not None]
    if not present:
        return dict(value=None, status='missing', sd=None, n=0, per_seed={}, ci95=None, mark=None)
    complete = len(present) == len(row_cells)
    seeds = set.intersection(*(set(c['per_seed']) for c in present))
    per_seed = {s: sum(c['per_seed'][s] for c in present) / len(present) for s in sorted(seeds)} if complete else {}
    sd = report_stats.mean_sd(list(per_seed.values()))[1] if len(per_seed) >= 2 else None
    return dict(value=sum(c['value'] for c in present) / len(present), status='ok' if complete else 'incomplete',
                sd=sd, n=len(per_seed), per_seed={}, ci95=None, mark=None)


def build_table(cells, group, kind, points=sg.SNAP_KIMG):
    """One paper table: rows = schedules, columns = the group's datasets + mean (kind, points: see cell_value).

    Returns:
        dict(group, kind, columns, rows); each row is dict(preset, label, cells) and each cell is a
        cell_value() dict with its mark. The mean cell's status is 'ok', 'incomplete' (some datasets
        missing: mean over the rest, unmarked) or 'missing' (no dataset present).
    """
    datasets = sg.GROUPS[group]
    rows = []
    for preset in sg.PRESET_NAMES:
        row_cells = [cell_value(cells.get((dataset, preset)), kind, points) for dataset in datasets]
        rows.append(dict(preset=preset, label=sg.PAPER_LABELS[preset], cells=row_cells + [_mean_cell(row_cells)]))

    # Mark each column; an incomplete mean is not comparable with the others, so it is not ranked.
    for col in range(len(datasets) + 1):
        column = [row['cells'][col] for row in rows]
        ranked = [c['value'] if c['status'] == 'ok' else None for c in column]
        for c, mark in zip(column, rank_marks(ranked)):
            c['mark'] = mark
    return dict(group=group, kind=kind, columns=list(datasets) + [MEAN], rows=rows)


TABLES = (  # (paper table number, kind, group)
    (3, 'last', sg.REAL_PREFIX),
    (4, 'last', sg.MIX_PREFIX),
    (5, 'min', sg.REAL_PREFIX),
    (6, 'min', sg.MIX_PREFIX),
)


def kind_title(kind, points):
    """Heading text of a table kind, naming its kimg: 'FID at 100 kimg', 'minimum FID over 40/60/80/100 kimg'."""
    if kind == 'last':
        return f'FID at {points[-1]} kimg'
    return 'minimum FID over ' + '/'.join(str(k) for k in points) + ' kimg'


def table_name(number, kind, group, points):
    """File/summary name: table3_fid100_CelebAMask-HQ (the last point's kimg in it), table5_fidmin_..."""
    return f'table{number}_fid{points[-1] if kind == "last" else "min"}_{group}'


def cell_text(cell, markdown=True, max_n=1):
    """Display text of a cell: 3 decimals (+ '*' for an incomplete mean) with its mark, or its status.

    With replicates the value is 'mean ± sd' over seeds (and '(n=k)' when k is below the most seeds
    of any cell, max_n); a single run with a recorded interval shows it as '[lo, hi]'.
    """
    if cell['value'] is None:
        return cell['status']
    text = f'{cell["value"]:.3f}' + ('*' if cell['status'] == 'incomplete' else '')
    if markdown and cell['mark'] == 'best':
        text = f'**{text}**'
    elif markdown and cell['mark'] == 'worst':
        text = f'<u>{text}</u>'
    if cell['sd'] is not None:
        text += f' ± {cell["sd"]:.3f}' + (f' (n={cell["n"]})' if cell['n'] < max_n else '')
    elif cell.get('ci95') is not None:
        text += ' [{:.3f}, {:.3f}]'.format(*cell['ci95'])
    return text


def max_replicates(tables):
    """The most seeds any cell of the tables has a value from."""
    return max((c['n'] for t in tables for row in t['rows'] for c in row['cells']), default=0)


def table_markdown(table, number, metric, points=sg.SNAP_KIMG, count_text='', max_n=1):
    """The table as Markdown, with a heading and its notes.

    Args:
        table, number, metric: build_table() output, paper table number, metric name.
        points:     Evaluation kimg points (named in the heading).
        count_text: Generated-image count to state in the heading ('' for the standard 50,000).
        max_n:      The most seeds of any cell (see cell_text).
    """
    count = f', {count_text}' if count_text else ''
    title = f'Table {number}: {kind_title(table["kind"], points)}, {table["group"]} ({metric}{count}, lower is better)'
    if all(c['status'] == 'missing' for row in table['rows'] for c in row['cells']):
        return f'### {title}\n\nNo runs of this group yet: every cell is missing.\n'
    lines = [f'### {title}', '',
             '| schedule | ' + ' | '.join(table['columns']) + ' |',
             '|---|' + '---:|' * len(table['columns'])]
    for row in table['rows']:
        lines.append(f'| {row["label"]} | ' + ' | '.join(cell_text(c, max_n=max_n) for c in row['cells']) + ' |')
    if any(c['status'] == 'incomplete' for row in table['rows'] for c in row['cells']):
        lines += ['', '\\* mean over the datasets present only (missing/partial runs excluded); not ranked.']
    return '\n'.join(lines) + '\n'


def table_csv(table):
    """The table as CSV: full-precision values, 'missing'/'partial k/n' text for absent ones, no marks."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['schedule', 'preset'] + table['columns'])
    for row in table['rows']:
        writer.writerow([row['label'], row['preset']] +
                        [repr(c['value']) if c['value'] is not None else c['status'] for c in row['cells']])
    return buf.getvalue()


def cells_csv(tables):
    """Every table cell in long form: mean, sd and count over seeds, and each seed's value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['table', 'group', 'dataset', 'preset', 'schedule', 'status', 'n', 'mean', 'sd',
                     'ci95_lo', 'ci95_hi', 'mark', 'per_seed'])
    for name, table in tables.items():
        for row in table['rows']:
            for dataset, c in zip(table['columns'], row['cells']):
                lo, hi = c['ci95'] if c.get('ci95') else ('', '')
                writer.writerow([name, table['group'], dataset, row['preset'], row['label'], c['status'], c['n'],
                                 '' if c['value'] is None else repr(c['value']), '' if c['sd'] is None else repr(c['sd']),
                                 lo, hi, c['mark'] or '', json.dumps({str(k): v for k, v in sorted(c['per_seed'].items())})])
    return buf.getvalue()


def points_csv(cells):
    """Every metric point as CSV: run dir, seed, generated-image count and recorded 95% interval."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['dataset', 'group', 'preset', 'schedule', 'seed', 'kimg', 'value', 'ci95_lo', 'ci95_hi',
                     'run_dir', 'num_gen'])
    for dataset in sg.DATASETS:
        for preset in sg.PRESET_NAMES:
            for record in cells.get((dataset, preset)) or []:
                for kimg, value in sorted(record['points'].items()):
                    lo, hi = record['intervals'].get(kimg, ('', ''))
                    writer.writerow([dataset, sg.group_of(dataset), preset, sg.PAPER_LABELS[preset], record['seed'],
                                     kimg, repr(value), lo, hi, record['run_dir'], record['num_gen']])
    return buf.getvalue()


# ----------------------------------------------------------------------------
# Paired comparisons and rankings (Markdown).


def _num(value, signed=False):
    return '–' if value is None else (f'{value:+.3f}' if signed else f'{value:.3f}')


def paired_markdown(name, title, summary_rows, quantity='FID'):
    """The paired comparison with DDCLR for one table (one line when there is no pair at all)."""
    if not any(r['pairs'] for r in summary_rows):
        return (f'### Paired with DDCLR: {title}\n\nNo pairs yet: a pair needs a schedule and DDCLR with values '
                f'on the same dataset and seed.\n')
    lines = [f'### Paired with DDCLR: {title}', '',
             'Difference = schedule - DDCLR over (dataset, seed) pairs where both have a value; negative = '
             f'lower {quantity} than DDCLR. Wilcoxon signed-rank (two-sided, scipy) and sign test (two-sided binomial).', '',
             '| schedule | pairs | mean diff | median diff | lower / higher / tied | Wilcoxon W | p | sign test p |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in summary_rows:
        w = '–' if r['wilcoxon_w'] is None else f'{r["wilcoxon_w"]:g}'
        lines.append(f'| {r["label"]} | {r["pairs"]} | {_num(r["mean_diff"], True)} | {_num(r["median_diff"], True)} | '
                     f'{r["better"]} / {r["worse"]} / {r["ties"]} | {w} | {report_stats.format_p(r["wilcoxon_p"])} | '
                     f'{report_stats.format_p(r["sign_p"])} |')
    return '\n'.join(lines) + '\n'


def ranking_markdown(title, ranks, datasets):
    """Rank per dataset (1 = lowest FID, ties averaged) and the mean rank per schedule."""
    lines = [f'### Ranking: {title}', '']
    if not ranks['columns']:
        return '\n'.join(lines + ['No dataset has values for all 8 schedules yet; nothing to rank.', ''])
    if ranks['skipped']:
        lines += [f'Not ranked (a schedule has no value): {", ".join(ranks["skipped"])}.', '']
    lines += ['| schedule | ' + ' | '.join(ranks['columns']) + ' | mean rank |',
              '|---|' + '---:|' * (len(ranks['columns']) + 1)]
    keep = [datasets.index(d) for d in ranks['columns']]
    for row in ranks['rows']:
        lines.append(f'| {row["label"]} | ' + ' | '.join(f'{row["ranks"][i]:g}' for i in keep) +
                     f' | {row["mean_rank"]:.2f} |')
    return '\n'.join(lines) + '\n'


def paired_csv(paired):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    keys = ['preset', 'label', 'pairs', 'mean_diff', 'median_diff', 'better', 'worse', 'ties', 'wilcoxon_w',
            'wilcoxon_p', 'sign_p']
    writer.writerow(['table'] + keys)
    for name, rows in paired.items():
        for r in rows:
            writer.writerow([name] + ['' if r[k] is None else r[k] for k in keys])
    return buf.getvalue()

# ----------------------------------------------------------------------------
# The whole report.


def status_lines(cells, points=sg.SNAP_KIMG, repeats=1):
    """Run status: one line summarising every missing run, then one line per partial run."""
    lines, missing = [], []
    for run in sg.grid(repeats):
        record = next((r for r in cells.get((run.dataset, run.schedule)) or [] if r['seed'] == run.seed), None)
        if record is None:
            missing.append(run)
            continue
        have = [k for k in points if k in record['points']]
        if len(have) < len(points):
            lines.append(f'- {run.name}: partial, points at kimg {have or "none"} ({record["run_dir"]})')
    if missing:
        lines.insert(0, f'- missing (no run dir): {len(missing)} of {len(sg.grid(repeats))} runs: '
                        f'{_compact(missing, repeats)}')
    return lines


def _compact(runs, repeats=1):
    """'Mix-dataset1/fixed' for one run; datasets whose runs are all missing by name, others by their runs."""
    by_dataset = collections.OrderedDict()
    for run in runs:
        by_dataset.setdefault(run.dataset, []).append(run.name.split('/', 1)[1])
    per_dataset = len(sg.PRESET_NAMES) * repeats
    whole = [d for d, names in by_dataset.items() if len(names) == per_dataset]
    parts = [f'every run of {", ".join(whole)}'] if whole else []
    for dataset, names in by_dataset.items():
        if dataset not in whole:
            parts.append(f'{dataset}/{{{", ".join(names)}}}' if len(names) > 1 else f'{dataset}/{names[0]}')
    return '; '.join(parts)


def count_summary(cells, metric):
    """What the report must say about generated-image counts.

    Returns:
        (per_count, header, heading): per_count maps num_gen -> number of runs with values of that
        count; header is a sentence for the report's top ('' when every value is from the standard
        50,000 images); heading is the count for the table headings ('' for the standard count,
        'N generated images', or 'mixed generated-image counts').
    """
    per_count = collections.Counter(r['num_gen'] for rs in cells.values() for r in rs if r['num_gen'] is not None)
    if set(per_count) <= {sg.STANDARD_NUM_GEN}:
        return per_count, '', ''
    if len(per_count) == 1:
        (n,) = per_count
        header = (f'**{metric} values are from {n:,} generated images per point, not {sg.STANDARD_NUM_GEN:,}**: '
                  f'not comparable with FID50k numbers (FID from few images is biased upwards).')
        return per_count, header, f'{n:,} generated images'
    runs = ', '.join(f'{n:,} images ({c} run{"s" * (c != 1)})' for n, c in sorted(per_count.items(), reverse=True))
    header = (f'**Runs differ in generated-image count**: {runs}. Values of different counts are not '
              f'comparable (FID from few images is biased upwards); see points.csv or summary.json for each run\'s count.')
    return per_count, header, 'mixed generated-image counts'


def axis_label(metric, per_count):
    """'FID (256 generated images)': the quantity and the real sample count of the values drawn."""
    base = 'FID' if metric.startswith('fid') else metric
    if len(per_count) == 1:
        return f'{base} ({next(iter(per_count)):,} generated images)'
    return f'{base} (mixed generated-image counts)' if per_count else base


def _figures(cells, out_dir, metric, per_count):
    """Draw the PNG figures; returns (list of (name, bytes or None when not drawn for lack of data))."""
    ylabel = axis_label(metric, per_count)
    quantity = ylabel.split(' (')[0]
    specs = [
        ('figure5_fid_Mix-dataset.png', sg.MIX_PREFIX, FIGURE5_SCHEDULES),
        ('fid_curves_CelebAMask-HQ.png', sg.REAL_PREFIX, sg.PRESET_NAMES),
        ('fid_curves_Mix-dataset.png', sg.MIX_PREFIX, sg.PRESET_NAMES),
    ]
    drawn = []
    for name, group, presets in specs:
        title = f'{quantity} during transfer learning, {group} (line: mean over seeds; band: ±1 sd over seeds, or one run\'s 95% interval)'
        drawn.append((name, report_figures.plot_fid_curves(cells, group, presets, os.path.join(out_dir, name), ylabel, title)))
    drawn.append(('lr_curves.png', report_figures.plot_lr_curves(os.path.join(out_dir, 'lr_curves.png'))))
    return drawn


def _analyses(tables, metric, points, count_heading):
    """Paired comparisons and rankings of every table: (markdown parts, paired dict, ranks dict)."""
    md, paired, ranks = [], {}, {}
    for number, kind, group in TABLES:
        name = table_name(number, kind, group, points)
        title = f'Table {number}, {kind_title(kind, points)}, {group}'
        paired[name] = report_stats.paired_summary(tables[name])
        ranks[name] = report_stats.ranking(tables[name])
        md.append(paired_markdown(name, title, paired[name]))
        md.append(ranking_markdown(title, ranks[name], list(sg.GROUPS[group])))
    return md, paired, ranks


def _paper_comparison(tables, points):
    """(markdown parts, terminal text, dict name -> rows) of our tables beside the paper's."""
    paper = paper_compare.load_paper_tables()
    md, text, rows_by_name = [], [], {}
    if tuple(points) != sg.SNAP_KIMG:
        note = (f'Note: these tables use kimg {", ".join(map(str, points))}; the paper\'s use 40, 60, 80, 100, '
                f'so the numbers measure different things.')
        md += [note, '']
        text.append(note)
    for number, kind, group in TABLES:
        name = table_name(number, kind, group, points)
        rows = paper_compare.compare_table(tables[name], paper[number])
        rows_by_name[name] = rows
        title = f'{kind_title(kind, sg.SNAP_KIMG)}, {group}'
        md.append(paper_compare.comparison_markdown(number, title, tables[name]['columns'], rows))
        text.append(paper_compare.comparison_text(number, title, tables[name]['columns'], rows))
    return md, '\n\n'.join(text), rows_by_name


def _html_table(table, max_n):
    if all(c['status'] == 'missing' for row in table['rows'] for c in row['cells']):
        return report_html.paragraph('No runs of this group yet: every cell is missing.')
    rows, classes = [], []
    for row in table['rows']:
        rows.append([row['label']] + [cell_text(c, markdown=False, max_n=max_n) for c in row['cells']])
        classes.append([''] + [c['mark'] or ('missing' if c['value'] is None else '') for c in row['cells']])
    return report_html.table_html(['schedule'] + table['columns'], rows, classes)


def _html_page(md_title, intro, tables, table_titles, analyses_md, status, figures, max_n, memorised=()):
    """report.html from the same content as report.md (tables as HTML, the analyses as preformatted Markdown)."""
    sections = [(None, report_html.markdown_html('\n'.join(intro)))]
    for name, title in table_titles:
        sections.append((title, _html_table(tables[name], max_n)))
    sections.append(('Paired comparisons and rankings', report_html.markdown_html('\n'.join(analyses_md))))
    sections.append(('Run status', report_html.markdown_html('\n'.join(s.lstrip('- ') for s in status))
                     or report_html.paragraph('All runs of the grid finished.')))
    figs = [report_html.figure_html(name, data) for name, data in figures if data is not None]
    missing = [name for name, data in figures if data is None]
    note = report_html.paragraph(f'Not drawn (no data): {", ".join(missing)}.', note=True) if missing else ''
    if figures:
        sections.append(('Figures', '\n'.join(figs) + note))
    if memorised:
        sections.append(('Most memorised generated images', report_html.memorised_panel(memorised)))
    return report_html.page(md_title, sections)


def _header(runs_dir, cells, metric, points, count_header):
    """(title, intro sentences, finished run count)."""
    records = [r for rs in cells.values() for r in rs]
    finished = sum(1 for r in records if sg.points_status(r['points'], points) == 'finished')
    seeds = sorted({r['seed'] for r in records})
    seed_text = f' over {len(seeds)} seeds ({", ".join(map(str, seeds))}), {len(records)} runs' if len(seeds) > 1 else ''
    intro = [f'Runs found under {runs_dir}: {len(cells)} of {sg.NUM_CELLS} grid cells{seed_text}, {finished} finished '
             f'(all of kimg {", ".join(map(str, points))}).']
    if count_header:
        intro.append(count_header)
    intro.append('Marking as in the paper: bold = the best two of a column, underlined = the worst two. '
                 'With replicates a cell is mean ± sd over seeds; a single run with a recorded FID interval shows '
                 'it as [lo, hi] (95%, sampling noise of its generated images only).')
    return f'Learning-rate study report ({metric})', intro, finished


def write_report(runs_dir, out_dir, metric=sg.METRIC, plots=True, points=sg.SNAP_KIMG, compare_paper=False):
    """Write every report file into out_dir.

    Args:
        runs_dir: Directory searched recursively for run dirs.
        out_dir:  Output directory (created).
        metric:   Metric name; its file is metric-<metric>.jsonl and its result key the same name (or the
                  relabelled key of a line with fewer generated images, e.g. fid256_full).
        plots:    Draw the PNG figures (needs matplotlib).
        points:   Evaluation kimg points: Tables 3/4 use the last, Tables 5/6 the minimum over all.
        compare_paper: Add the paper's Tables 3-6 beside ours (report.md, report.html, summary.json).

    Returns:
        The summary dict also written to summary.json (with 'paper_text', the comparison as terminal text).
    """
    points = tuple(sorted(set(points)))
    assert points, 'at least one evaluation point is needed'
    os.makedirs(out_dir, exist_ok=True)
    cells, notes = collect_runs(runs_dir, metric, points)
    per_count, count_header, count_heading = count_summary(cells, metric)
    title, intro, finished = _header(runs_dir, cells, metric, points, count_header)

    tables, table_titles = {}, []
    for number, kind, group in TABLES:
        name = table_name(number, kind, group, points)
        tables[name] = build_table(cells, group, kind, points)
        table_titles.append((name, f'Table {number}: {kind_title(kind, points)}, {group}'))
        dnnlib.util.atomic_write_text(os.path.join(out_dir, name + '.csv'), table_csv(tables[name]))
    max_n = max_replicates(tables.values())
    md = [f'# {title}', ''] + [line for t in intro for line in (t, '')]
    for number, kind, group in TABLES:
        name = table_name(number, kind, group, points)
        md.append(table_markdown(tables[name], number, metric, points, count_heading, max_n))

    analyses_md, paired, ranks = _analyses(tables, metric, points, count_heading)
    paper_text, paper_rows = '', None
    if compare_paper:
        paper_md, paper_text, paper_rows = _paper_comparison(tables, points)
        analyses_md = analyses_md + ['## Against the paper', ''] + paper_md
    md += ['## Paired comparisons and rankings', ''] + analyses_md

    lines = status_lines(cells, points, repeats=max([r['seed'] + 1 for rs in cells.values() for r in rs] or [1]))
    md += ['## Run status', ''] + (lines or ['All runs of the grid finished.']) + ['']
    md += _notes_markdown(notes)

    why_md, why_figures, why_summary = why_sections(runs_dir, out_dir, points, plots)
    memorised = most_memorised(runs_dir, points)
    md += why_md + memorised_markdown(memorised, out_dir)
    figures = (_figures(cells, out_dir, metric, per_count) if plots else []) + why_figures
    md += _figures_markdown(figures)
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'report.md'), '\n'.join(md))
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'report.html'),
                                  _html_page(title, intro, tables, table_titles, analyses_md + why_md, lines, figures,
                                             max_n, memorised))
    _write_csvs(out_dir, cells, tables, paired)

    summary = _summary(runs_dir, metric, points, finished, per_count, count_header, notes, cells, tables,
                       paired, ranks, lines)
    if paper_rows is not None:
        summary['paper_comparison'] = paper_rows
    summary['why'] = why_summary
    summary['most_memorised'] = [{k: v for k, v in t.items() if k not in ('image', 'image_png')} for t in memorised]
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'summary.json'), json.dumps(summary, indent=2) + '\n')
    summary['paper_text'] = paper_text
    return summary


def _figures_markdown(figures):
    if not figures:
        return []
    md = ['## Figures', ''] + [f'![{n}]({n})' for n, data in figures if data is not None]
    missing = [n for n, data in figures if data is None]
    md += [f'Not drawn (no data for their schedules): {", ".join(missing)}.'] if missing else []
    return md + ['']


def _summary(runs_dir, metric, points, finished, per_count, count_header, notes, cells, tables, paired, ranks, lines):
    """The summary.json content."""
    return dict(
        metric=metric, runs_dir=os.path.abspath(runs_dir), snap_kimg=list(points), finished=finished,
        num_gen=dict(runs_per_count={str(n): c for n, c in sorted(per_count.items())},
                     note=count_header, mixed_within_runs=notes['mixed_counts']),
        runs=[dict(dataset=d, preset=p, seed=r['seed'], run_dir=r['run_dir'], found_by=r['found_by'],
                   num_gen=r['num_gen'], points={str(k): v for k, v in sorted(r['points'].items())},
                   ci95={str(k): list(v) for k, v in sorted(r['intervals'].items())})
              for (d, p), rs in sorted(cells.items()) for r in rs],
        tables=_json_tables(tables), paired=paired, ranks=ranks, status=lines,
        notes={k: notes[k] for k in ('unrecognised', 'duplicates')})


def _json_tables(tables):
    """Tables for summary.json: per_seed keys as strings (JSON objects have string keys)."""
    out = {}
    for name, table in tables.items():
        rows = [dict(row, cells=[dict(c, per_seed={str(k): v for k, v in sorted(c['per_seed'].items())})
                                 for c in row['cells']]) for row in table['rows']]
        out[name] = dict(table, rows=rows)
    return out


def _notes_markdown(notes):
    if not (notes['unrecognised'] or notes['duplicates'] or notes['mixed_counts']):
        return []
    md = ['## Notes', '']
    md += [f'- not in the grid (ignored): {n}' for n in notes['unrecognised']]
    md += [f'- several run dirs for one cell and seed (used the one with most points): {n}' for n in notes['duplicates']]
    md += [f'- generated-image counts differ within a run (counts are never mixed): {n}' for n in notes['mixed_counts']]
    return md + ['']


def _write_csvs(out_dir, cells, tables, paired):
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'points.csv'), points_csv(cells))
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'cells.csv'), cells_csv(tables))
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'paired.csv'), paired_csv(paired))


def _points_option(ctx, param, value):
    try:
        return parse_points(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param)


@click.command()
@click.argument('runs_dir', type=click.Path(exists=True, file_okay=False))
@click.option('--out', 'out_dir', required=True, type=click.Path(file_okay=False), help='Output directory.')
@click.option('--metric', default=sg.METRIC, show_default=True, help='Metric to tabulate (metric-<name>.jsonl).')
@click.option('--points', default=','.join(map(str, sg.SNAP_KIMG)), show_default=True, callback=_points_option,
              metavar='KIMG,...', help='Evaluation points: Tables 3/4 show the last, Tables 5/6 the minimum over all.')
@click.option('--no-plots', is_flag=True, help='Skip the PNG figures (no matplotlib needed).')
@click.option('--compare-paper', is_flag=True, help="Print the paper's Tables 3-6 beside ours, with the difference per cell.")
def main(runs_dir, out_dir, metric, points, no_plots, compare_paper):
    """Write the study's tables (paper Tables 3-6), paired tests, rankings, figures, report.html and a JSON summary."""
    summary = write_report(runs_dir, out_dir, metric=metric, plots=not no_plots, points=points,
                           compare_paper=compare_paper)
    if compare_paper:
        click.echo(summary['paper_text'] + '\n')
    click.echo(f'{len(summary["runs"])} runs read, {summary["finished"]} finished; report in {out_dir}/report.md '
               f'and {out_dir}/report.html')
    if summary['num_gen']['note']:
        click.echo(f'note: {summary["num_gen"]["note"].replace("**", "")}')
    if not summary['runs']:
        click.echo(f'warning: no run dirs with a recognised dataset and schedule under {runs_dir}', err=True)


if __name__ == '__main__':
    main()
