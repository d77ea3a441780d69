"""Sample schedules on a grid and draw them (matplotlib is imported only when a plot is drawn)."""

import errno
import io
import os

import numpy as np

from dnnlib.util import atomic_write_bytes, ensure_output_dir

from . import lr_at, preset_name, to_spec, PAPER_LABELS


def lr_curve(schedule, total_kimg, points=1000):
    """Sample a schedule over a whole run.

    The grid is `points` evenly spaced values plus, for cyclical schedules, every cycle start and
    midpoint, so the drawn peaks and troughs are the true ones rather than the nearest samples.

    Args:
        schedule: A dict from parse_lr_schedule() (not 'none': it has no curve of its own).
        total_kimg: Run length in kimg (> 0).
        points: Number of evenly spaced samples (>= 2).

    Returns:
        (kimg, lr): two float64 arrays of the same length, kimg sorted ascending from 0 to total_kimg.
    """
    if points < 2:
        raise ValueError(f'points must be >= 2, got {points}')
    if not total_kimg > 0:
        raise ValueError(f'total_kimg must be > 0, got {total_kimg}')
    total_nimg = total_kimg * 1000
    nimg = np.linspace(0.0, total_nimg, points)
    cycles = schedule.get('cycles') if schedule else None
    if cycles:
        half = total_nimg / (2 * cycles)
        knots = np.arange(0, int(np.floor(2 * cycles)) + 1) * half
        nimg = np.union1d(nimg, knots[knots <= total_nimg])
    values = [lr_at(schedule, float(t), total_nimg) for t in nimg]
    if any(v is None for v in values):
        raise ValueError("the 'none' schedule keeps the optimizer's own lr and has no curve to plot")
    assert len(values) == len(nimg)
    return nimg / 1000.0, np.asarray(values, dtype=np.float64)


def label(schedule):
    """Legend text: 'DDCLR (ddclr)' for a preset, else the canonical spec."""
    name = preset_name(schedule)
    return f'{PAPER_LABELS[name]} ({name})' if name else to_spec(schedule)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError('plotting needs matplotlib: pip install matplotlib (or pip install ".[plot]")') from None
    matplotlib.use('Agg')  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def _check_output(out):
    """Fail before drawing: `out` must not be a directory and its folder must be writable."""
    if os.path.isdir(out):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), out)
    ensure_output_dir(os.path.dirname(os.path.abspath(out)))


def plot_schedules(schedules, total_kimg, out, points=1000, title=None):
    """Draw one curve per schedule, lr against kimg, into an image file (written atomically).

    Args:
        schedules: Schedule dicts from parse_lr_schedule().
        total_kimg: Run length in kimg.
        out: Output path; the extension picks the format (png, pdf, svg, ...).
        points: Samples per curve.
        title: Optional figure title.

    Returns:
        The output path.

    Raises:
        OSError (filename set) when `out` cannot be written: checked before drawing, and again by the
        atomic write (e.g. a full disk), which never leaves a partial file.
    """
    _check_output(out)
    curves = [(label(s), *lr_curve(s, total_kimg, points)) for s in schedules]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for name, kimg, values in curves:
            ax.plot(kimg, values, label=name, linewidth=1.2)
        ax.set_xlabel('training progress (kimg)')
        ax.set_ylabel('learning rate')
        ax.set_xlim(0, total_kimg)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fmt = os.path.splitext(out)[1].lstrip('.').lower() or 'png'
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
