"""Figures of the study report (matplotlib is imported only when a figure is drawn).

FID against kimg: one panel per dataset of a group plus a panel of the group mean, one line per
schedule (the mean over seeds) with a band: +-1 sd over seeds where a point has 2 or more replicates,
else the recorded 95% bootstrap interval of the single run. A panel without data says so in words;
the legend lists only the schedules drawn; a figure with no data at all is not written.
"""

import io
import math
import os

import click

import dnnlib
from scripts import study_grid as sg


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException('the figures need matplotlib: pip install matplotlib (or pass --no-plots)')
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def save_figure(plt, fig, path):
    """Write the figure as PNG (atomically) and return its bytes (the HTML page embeds them)."""
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format='png', dpi=100)
    finally:
        plt.close(fig)
    dnnlib.util.atomic_write_bytes(path, buf.getvalue())
    return buf.getvalue()


def cell_curve(records):
    """(kimgs, means, band lows, band highs) of one cell's replicates; bands None where there is none."""
    kimgs = sorted(set().union(*(r['points'] for r in records))) if records else []
    means, lows, highs = [], [], []
    for k in kimgs:
        values = [r['points'][k] for r in records if k in r['points']]
        mean = sum(values) / len(values)
        means.append(mean)
        if len(values) >= 2:
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            lows.append(mean - sd)
            highs.append(mean + sd)
        else:
            interval = next(r['intervals'].get(k) for r in records if k in r['points'])
            lows.append(interval[0] if interval else None)
            highs.append(interval[1] if interval else None)
    return kimgs, means, lows, highs


def group_curve(cells, group, preset):
    """The group mean of the per-dataset mean curves at kimg every dataset has, with a band.

    Band: +-1 sd over seeds of the per-seed group means where every dataset has the same >= 2 seeds,
    else the 95% interval of a mean of independent estimates, mean +- 1.96 sqrt(sum se_i^2) / k.
    """
    curves = [cell_curve(cells.get((d, preset)) or []) for d in sg.GROUPS[group]]
    if any(not c[0] for c in curves):
        return [], [], [], []
    common = sorted(set.intersection(*(set(c[0]) for c in curves)))
    means, lows, highs = [], [], []
    for k in common:
        at = [c[0].index(k) for c in curves]
        means.append(sum(c[1][i] for c, i in zip(curves, at)) / len(curves))
        spread = _group_spread(cells, group, preset, k, [(c, i) for c, i in zip(curves, at)])
        lows.append(None if spread is None else means[-1] - spread)
        highs.append(None if spread is None else means[-1] + spread)
    return common, means, lows, highs


def _group_spread(cells, group, preset, kimg, curve_at):
    """Half-width of the group-mean band at one kimg (see group_curve), or None."""
    per_seed = [{r['seed']: r['points'][kimg] for r in cells[(d, preset)] if kimg in r['points']}
                for d in sg.GROUPS[group]]
    seeds = set.intersection(*(set(p) for p in per_seed))
    if len(seeds) >= 2:
        means = [sum(p[s] for p in per_seed) / len(per_seed) for s in sorted(seeds)]
        mean = sum(means) / len(means)
        return math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1))
    if any(len(p) != 1 for p in per_seed):
        return None
    half = [(c[3][i] - c[2][i]) / 2 for c, i in curve_at if c[2][i] is not None]
    if len(half) < len(curve_at):
        return None
    return math.sqrt(sum(h ** 2 for h in half)) / len(curve_at)


def _draw_curve(ax, kimgs, means, lows, highs, label):
    line, = ax.plot(kimgs, means, marker='o', label=label)
    band = [(k, lo, hi) for k, lo, hi in zip(kimgs, lows, highs) if lo is not None]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def _finish_panel(ax, title, kimgs, ylabel, empty_text):
    ax.set_title(title)
    if not kimgs:
        ax.set_axis_off()
        ax.text(0.5, 0.5, empty_text, transform=ax.transAxes, ha='center', va='center', fontsize='large')
        return
    ax.set_xlabel('kimg')
    ax.set_ylabel(ylabel)
    if len(kimgs) <= 12:
        ax.set_xticks(sorted(kimgs))
    ax.tick_params(labelbottom=True)
    ax.grid(alpha=0.3)


def plot_fid_curves(cells, group, presets, path, ylabel, title):
    """Metric against kimg for the group; returns the PNG bytes, or None (nothing written) without data."""
    datasets = sg.GROUPS[group]
    panels = []
    for name in list(datasets) + [f'{group} mean']:
        curves = []
        for preset in presets:
            curve = cell_curve(cells.get((name, preset)) or []) if name in datasets else group_curve(cells, group, preset)
            if curve[0]:
                curves.append((preset, curve))
        panels.append((name, curves))
    if not any(curves for _, curves in panels):
        if os.path.isfile(path):
            os.remove(path)  # a figure from an earlier report would contradict this one
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    handles = {}
    for ax, (name, curves) in zip(axes.flat, panels):
        for preset, (kimgs, means, lows, highs) in curves:
            handles[preset] = _draw_curve(ax, kimgs, means, lows, highs, sg.PAPER_LABELS[preset])
        empty = 'no runs with data' if name in datasets else f'no data: the mean needs all {len(datasets)} datasets'
        _finish_panel(ax, name, sorted(set().union(*(c[0] for _, c in curves))) if curves else [], ylabel, empty)
    drawn = [p for p in presets if p in handles]
    fig.legend([handles[p] for p in drawn], [sg.PAPER_LABELS[p] for p in drawn], loc='upper right', fontsize='small')
    fig.suptitle(title)
    return save_figure(plt, fig, path)


def plot_lr_curves(path):
    """The 8 presets' learning rate over a 100 kimg run, one panel each (paper Figures 1-4)."""
    try:
        import schedulers
        from schedulers.plot import lr_curve
    except ImportError as err:
        raise click.ClickException(f'lr curves need the schedulers package ({err}); pass --no-plots to skip')
    plt = pyplot()
    curves = [lr_curve(schedulers.parse_lr_schedule(schedulers.PRESETS[p]), sg.TOTAL_KIMG) for p in sg.PRESET_NAMES]
    top = 1.05 * max(float(lr.max()) for _, lr in curves)
    fig, axes = plt.subplots(2, 4, figsize=(16, 6), sharex=True, sharey=True)
    for ax, preset, (kimg, lr) in zip(axes.flat, sg.PRESET_NAMES, curves):
        ax.plot(kimg, lr, linewidth=1.0)
        ax.set_title(f'{sg.PAPER_LABELS[preset]} ({preset})')
        ax.set_xlabel('kimg')
        ax.set_ylim(0, top)  # one scale for all panels, from 0 (set once: set_ylim stops autoscaling)
        ax.tick_params(labelbottom=True)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel('learning rate')
    axes[1, 0].set_ylabel('learning rate')
    return save_figure(plt, fig, path)
