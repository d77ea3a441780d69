"""Tables and figures of the learning-rate study from a directory of finished (or running) runs.

    python -m scripts.report RUNS_DIR --out DIR [--metric fid50k_full] [--points 40,60,80,100] [--no-plots]

Finds every run dir under RUNS_DIR (a directory with training_options.json), identifies its dataset
(basename of training_set_kwargs.path) and lr schedule (the preset recorded in training_options.json),
reads metric-<metric>.jsonl, and writes into DIR (with the default evaluation points 40,60,80,100;
--points changes them, and the last point replaces 100 in the names):

    report.md                 all tables, run status and notes (Markdown)
    table3_fid100_CelebAMask-HQ.csv, table4_fid100_Mix-dataset.csv
                              FID at the last point, 100 kimg (paper Tables 3 and 4)
    table5_fidmin_CelebAMask-HQ.csv, table6_fidmin_Mix-dataset.csv
                              minimum FID over all points (paper Tables 5 and 6)
    points.csv                every metric point: dataset, schedule, kimg, value, run dir
    summary.json              the same numbers, statuses and notes, machine-readable
    figure5_fid_Mix-dataset.png  FID against kimg on the Mix datasets for the five schedules of the
                              paper's Figure 5 (DDCLR, DCLR(3), DCLR(1), Fixed, CLR)
    fid_curves_CelebAMask-HQ.png, fid_curves_Mix-dataset.png   the same for all 8 schedules
    lr_curves.png             lr against kimg of the 8 presets (paper Figures 1-4)

Tables follow the paper: rows are the 8 schedules, columns the 5 datasets of a group plus their mean,
values with 3 decimals. Marking (paper section 3: bold = the best two of each column, double underline
= the worst two; Markdown has no double underline, so <u>x</u>): **x** for the two lowest values of a
column, <u>x</u> for the two highest, ranked on unrounded values (ties share a rank, so a tie can mark
three cells). A column is marked only when it has at least 4 values. A run that does not exist shows
'missing'; a run without the needed points shows 'partial k/n'. Neither enters a mean: the mean is
then taken over the datasets present, printed with a '*', and left out of the mean column's marking.

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

import click

import dnnlib
from scripts import study_grid as sg

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


def collect_runs(runs_dir, metric=sg.METRIC, points=sg.SNAP_KIMG):
    """Read every run dir under runs_dir.

    Args:
        runs_dir: Directory searched recursively for run dirs.
        metric:   Metric name (file metric-<metric>.jsonl).
        points:   Evaluation kimg points (decide duplicates and which generated-image count is used).

    Returns:
        (cells, notes): cells maps (dataset, preset) -> dict(run_dir, points, num_gen, found_by), where
        num_gen is the generated-image count of the values used (None without values); notes is a dict
        of lists: 'unrecognised' (run dirs outside the grid), 'duplicates' (cells with more than one
        run dir: the one with the most evaluation points is used, ties go to the later directory) and
        'mixed_counts' (runs whose lines differ in generated-image count: only one count is used).
    """
    cells, notes = {}, {'unrecognised': [], 'duplicates': [], 'mixed_counts': []}
    for run_dir in sg.find_run_dirs(runs_dir):
        try:
            with open(os.path.join(run_dir, 'training_options.json'), encoding='utf-8') as f:
                options = json.load(f)
        except (OSError, ValueError) as err:
            notes['unrecognised'].append(f'{run_dir}: unreadable training_options.json ({err})')
            continue
        dataset = dataset_of(options, run_dir)
        preset, found_by = schedule_of(options, run_dir)
        if dataset not in sg.DATASETS or preset is None:
            notes['unrecognised'].append(f'{run_dir}: dataset {dataset!r}, schedule {preset!r}')
            continue
        series = sg.read_metric_series(run_dir, metric)
        num_gen, found = sg.choose_series(series, points)
        if len(series) > 1:
            counts = ', '.join(f'{n:,} ({len(series[n])} points)' for n in sorted(series, reverse=True))
            notes['mixed_counts'].append(f'{run_dir}: lines from {counts}; used only the {num_gen:,}-image lines')
        record = dict(run_dir=run_dir, points=found, num_gen=num_gen, found_by=found_by)
        previous = cells.get((dataset, preset))
        if previous is not None:
            notes['duplicates'].append(f'{dataset}/{preset}: {previous["run_dir"]} and {run_dir}')
            if _coverage(record, points) < _coverage(previous, points):
                continue
        cells[(dataset, preset)] = record
    return cells, notes

def _coverage(record, points):
    """(evaluation points present, points overall) of a run record: which duplicate run dir to keep."""
    return sum(k in record['points'] for k in points), len(record['points'])


def parse_points(text):
    """'40,60,80,100' -> (40, 60, 80, 100): sorted, distinct, non-negative integers (ValueError otherwise)."""
    try:
        values = [int(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise ValueError(f'expected comma-separated whole kimg numbers, got {text!r}') from None
    if not values or min(values) < 0:
        raise ValueError(f'expected one or more non-negative kimg numbers, got {text!r}')
    return tuple(sorted(set(values)))

# ----------------------------------------------------------------------------
# Tables.


def cell_value(record, kind, points=sg.SNAP_KIMG):
    """(value or None, status text) of one run for a table kind.

    Args:
        record: collect_runs() cell record, or None for a missing run.
        kind:   'last' (value at the last evaluation point; paper Tables 3/4) or 'min' (minimum over
                all evaluation points, which must all be present; paper Tables 5/6).
        points: Evaluation kimg points, sorted.
    """
    if record is None:
        return None, 'missing'
    found = record['points']
    have = sum(k in found for k in points)
    partial = f'partial {have}/{len(points)}'
    if kind == 'last':
        return (found[points[-1]], 'ok') if points[-1] in found else (None, partial)
    if have < len(points):
        return None, partial
    return min(found[k] for k in points), 'ok'


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


def build_table(cells, group, kind, points=sg.SNAP_KIMG):
    """One paper table: rows = schedules, columns = the group's datasets + mean (kind, points: see cell_value).

    Returns:
        dict(group, kind, columns, rows); each row is dict(preset, label, cells) and each cell is
        dict(value, status, mark). The mean cell's status is 'ok', 'incomplete' (some datasets
        missing: mean over the rest, unmarked) or 'missing' (no dataset present).
    """
    datasets = sg.GROUPS[group]
    rows = []
    for preset in sg.PRESET_NAMES:
        row_cells = []
        for dataset in datasets:
            value, status = cell_value(cells.get((dataset, preset)), kind, points)
            row_cells.append(dict(value=value, status=status, mark=None))
        present = [c['value'] for c in row_cells if c['value'] is not None]
        if not present:
            mean = dict(value=None, status='missing', mark=None)
        else:
            mean = dict(value=sum(present) / len(present),
                        status='ok' if len(present) == len(datasets) else 'incomplete', mark=None)
        rows.append(dict(preset=preset, label=sg.PAPER_LABELS[preset], cells=row_cells + [mean]))

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


def cell_text(cell, markdown=True):
    """Display text of a cell: 3 decimals (+ '*' for an incomplete mean) with its mark, or its status."""
    if cell['value'] is None:
        return cell['status']
    text = f'{cell["value"]:.3f}' + ('*' if cell['status'] == 'incomplete' else '')
    if markdown and cell['mark'] == 'best':
        return f'**{text}**'
    if markdown and cell['mark'] == 'worst':
        return f'<u>{text}</u>'
    return text


def table_markdown(table, number, metric, points=sg.SNAP_KIMG, count_text=''):
    """The table as Markdown, with a heading and its notes.

    Args:
        table, number, metric: build_table() output, paper table number, metric name.
        points:     Evaluation kimg points (named in the heading).
        count_text: Generated-image count to state in the heading ('' for the standard 50,000).
    """
    count = f', {count_text}' if count_text else ''
    title = f'Table {number}: {kind_title(table["kind"], points)}, {table["group"]} ({metric}{count}, lower is better)'
    lines = [f'### {title}', '',
             '| schedule | ' + ' | '.join(table['columns']) + ' |',
             '|---|' + '---:|' * len(table['columns'])]
    for row in table['rows']:
        lines.append(f'| {row["label"]} | ' + ' | '.join(cell_text(c) for c in row['cells']) + ' |')
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


def points_csv(cells):
    """Every metric point as CSV, with the run dir and the generated-image count it was computed from."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['dataset', 'group', 'preset', 'schedule', 'kimg', 'value', 'run_dir', 'num_gen'])
    for dataset in sg.DATASETS:
        for preset in sg.PRESET_NAMES:
            record = cells.get((dataset, preset))
            for kimg, value in sorted((record or {'points': {}})['points'].items()):
                writer.writerow([dataset, sg.group_of(dataset), preset, sg.PAPER_LABELS[preset], kimg,
                                 repr(value), record['run_dir'], record['num_gen']])
    return buf.getvalue()

# ----------------------------------------------------------------------------
# Figures (matplotlib imported only here).


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException('the figures need matplotlib: pip install matplotlib (or pass --no-plots)')
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _save_figure(plt, fig, path):
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format='png', dpi=100)
    finally:
        plt.close(fig)
    dnnlib.util.atomic_write_bytes(path, buf.getvalue())


def group_mean_curve(cells, group, preset):
    """(kimg list, mean value list) over the group's datasets, at kimg points every dataset has."""
    runs = [cells.get((d, preset)) for d in sg.GROUPS[group]]
    if any(r is None for r in runs):
        return [], []
    common = sorted(set.intersection(*(set(r['points']) for r in runs)))
    return common, [sum(r['points'][k] for r in runs) / len(runs) for k in common]


def plot_fid_curves(cells, group, presets, path, metric):
    """Metric against kimg: one panel per dataset of the group plus a panel of the group mean, one line per schedule."""
    plt = _pyplot()
    datasets = sg.GROUPS[group]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    panels = list(zip(axes.flat, list(datasets) + [f'{group} mean']))
    for ax, title in panels:
        for preset in presets:
            if title in datasets:
                record = cells.get((title, preset))
                kimgs = sorted((record or {'points': {}})['points'])
                values = [record['points'][k] for k in kimgs] if record else []
            else:
                kimgs, values = group_mean_curve(cells, group, preset)
            ax.plot(kimgs, values, marker='o', label=sg.PAPER_LABELS[preset])
        ax.set_title(title)
        ax.set_xlabel('kimg')
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize='small')
    fig.suptitle(f'{metric} during transfer learning, {group}')
    _save_figure(plt, fig, path)


def plot_lr_curves(path):
    """The 8 presets' learning rate over a 100 kimg run, one panel each (paper Figures 1-4)."""
    try:
        import schedulers
        from schedulers.plot import lr_curve
    except ImportError as err:
        raise click.ClickException(f'lr curves need the schedulers package ({err}); pass --no-plots to skip')
    plt = _pyplot()
    curves = [lr_curve(schedulers.parse_lr_schedule(schedulers.PRESETS[p]), sg.TOTAL_KIMG) for p in sg.PRESET_NAMES]
    top = 1.05 * max(float(lr.max()) for _, lr in curves)
    fig, axes = plt.subplots(2, 4, figsize=(16, 6), sharex=True, sharey=True)
    for ax, preset, (kimg, lr) in zip(axes.flat, sg.PRESET_NAMES, curves):
        ax.plot(kimg, lr, linewidth=1.0)
        ax.set_title(f'{sg.PAPER_LABELS[preset]} ({preset})')
        ax.set_xlabel('kimg')
        ax.set_ylim(0, top)  # one scale for all panels, from 0 (set once: set_ylim stops autoscaling)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel('learning rate')
    axes[1, 0].set_ylabel('learning rate')
    _save_figure(plt, fig, path)

# ----------------------------------------------------------------------------
# The whole report.


def status_lines(cells, points=sg.SNAP_KIMG):
    """One line per grid cell that is not finished (missing or partial)."""
    lines = []
    for run in sg.grid():
        record = cells.get((run.dataset, run.schedule))
        if record is None:
            lines.append(f'- {run.label}: missing (no run dir)')
            continue
        have = [k for k in points if k in record['points']]
        if len(have) < len(points):
            lines.append(f'- {run.label}: partial, points at kimg {have or "none"} ({record["run_dir"]})')
    return lines


def count_summary(cells, metric):
    """What the report must say about generated-image counts.

    Returns:
        (per_count, header, heading): per_count maps num_gen -> number of runs with values of that
        count; header is a sentence for the report's top ('' when every value is from the standard
        50,000 images); heading is the count for the table headings ('' for the standard count,
        'N generated images', or 'mixed generated-image counts').
    """
    per_count = collections.Counter(r['num_gen'] for r in cells.values() if r['num_gen'] is not None)
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


def write_report(runs_dir, out_dir, metric=sg.METRIC, plots=True, points=sg.SNAP_KIMG):
    """Write every report file into out_dir.

    Args:
        runs_dir: Directory searched recursively for run dirs.
        out_dir:  Output directory (created).
        metric:   Metric name; its file is metric-<metric>.jsonl and its result key the same name (or the
                  relabelled key of a line with fewer generated images, e.g. fid256_full).
        plots:    Draw the PNG figures (needs matplotlib).
        points:   Evaluation kimg points: Tables 3/4 use the last, Tables 5/6 the minimum over all.

    Returns:
        The summary dict also written to summary.json.
    """
    points = tuple(sorted(set(points)))
    assert points, 'at least one evaluation point is needed'
    os.makedirs(out_dir, exist_ok=True)
    cells, notes = collect_runs(runs_dir, metric, points)
    finished = sum(1 for r in cells.values() if sg.points_status(r['points'], points) == 'finished')
    per_count, count_header, count_heading = count_summary(cells, metric)

    md = [f'# Learning-rate study report ({metric})', '',
          f'Runs found under `{runs_dir}`: {len(cells)} of {len(sg.grid())} grid cells, {finished} finished '
          f'(all of kimg {", ".join(map(str, points))}).', '']
    if count_header:
        md += [count_header, '']
    md += ['Marking as in the paper: **bold** = the best two of a column, <u>underlined</u> = the worst two.', '']
    tables = {}
    for number, kind, group in TABLES:
        table = build_table(cells, group, kind, points)
        name = table_name(number, kind, group, points)
        tables[name] = table
        md.append(table_markdown(table, number, metric, points, count_heading))
        dnnlib.util.atomic_write_text(os.path.join(out_dir, name + '.csv'), table_csv(table))
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'points.csv'), points_csv(cells))

    lines = status_lines(cells, points)
    md += ['## Run status', ''] + (lines or ['All 80 runs finished.']) + ['']
    if notes['unrecognised'] or notes['duplicates'] or notes['mixed_counts']:
        md += ['## Notes', '']
        md += [f'- not in the grid (ignored): {n}' for n in notes['unrecognised']]
        md += [f'- several run dirs for one cell (used the one with most points): {n}' for n in notes['duplicates']]
        md += [f'- generated-image counts differ within a run (counts are never mixed): {n}'
               for n in notes['mixed_counts']]
        md.append('')

    if plots:
        figures = [
            ('figure5_fid_Mix-dataset.png', lambda p: plot_fid_curves(cells, sg.MIX_PREFIX, FIGURE5_SCHEDULES, p, metric)),
            ('fid_curves_CelebAMask-HQ.png', lambda p: plot_fid_curves(cells, sg.REAL_PREFIX, sg.PRESET_NAMES, p, metric)),
            ('fid_curves_Mix-dataset.png', lambda p: plot_fid_curves(cells, sg.MIX_PREFIX, sg.PRESET_NAMES, p, metric)),
            ('lr_curves.png', plot_lr_curves),
        ]
        md += ['## Figures', '']
        for name, draw in figures:
            draw(os.path.join(out_dir, name))
            md.append(f'![{name}]({name})')
        md.append('')
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'report.md'), '\n'.join(md))

    summary = dict(
        metric=metric, runs_dir=os.path.abspath(runs_dir), snap_kimg=list(points), finished=finished,
        num_gen=dict(runs_per_count={str(n): c for n, c in sorted(per_count.items())},
                     note=count_header, mixed_within_runs=notes['mixed_counts']),
        runs=[dict(dataset=d, preset=p, run_dir=r['run_dir'], found_by=r['found_by'], num_gen=r['num_gen'],
                   points={str(k): v for k, v in sorted(r['points'].items())})
              for (d, p), r in sorted(cells.items())],
        tables=tables, status=lines,
        notes={k: notes[k] for k in ('unrecognised', 'duplicates')})
    dnnlib.util.atomic_write_text(os.path.join(out_dir, 'summary.json'), json.dumps(summary, indent=2) + '\n')
    return summary


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
def main(runs_dir, out_dir, metric, points, no_plots):
    """Write the study's tables (paper Tables 3-6), figures and a JSON summary for RUNS_DIR into --out."""
    summary = write_report(runs_dir, out_dir, metric=metric, plots=not no_plots, points=points)
    click.echo(f'{len(summary["runs"])} runs read, {summary["finished"]} finished; report in {out_dir}/report.md')
    if summary['num_gen']['note']:
        click.echo(f'note: {summary["num_gen"]["note"].replace("**", "")}')
    if not summary['runs']:
        click.echo(f'warning: no run dirs with a recognised dataset and schedule under {runs_dir}', err=True)


if __name__ == '__main__':
    main()
