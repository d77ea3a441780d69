"""Learning-rate schedules for training: pure functions of images seen (no torch, no state).

Public API (docs/design.md, docs/schedules.md):
    parse_lr_schedule(spec) -> dict     '--lr-schedule' value -> {'func_name': ..., **kwargs}
    lr_at(schedule, cur_nimg, total_nimg, default=None) -> float | None
    describe(schedule) -> str           one line for logs
    to_spec(schedule) -> str            canonical spec; parse_lr_schedule(to_spec(d)) == d
    PRESETS, KINDS, list_choices(), DEFAULT_SPEC

Typical use in a training loop:
    sched = parse_lr_schedule(opts.lr_schedule)            # at start-up; ValueError -> CLI error
    lr = lr_at(sched, cur_nimg, total_kimg * 1000, default=base_lr)
"""

from . import lr  # noqa: F401  (the schedule functions, named by 'func_name')
from .spec import (  # noqa: F401
    DEFAULT_SPEC, KINDS, PAPER_LABELS, PRESETS, describe, list_choices, parse_lr_schedule, preset_name,
    to_spec, usage, validate,
)


def lr_at(schedule, cur_nimg, total_nimg, default=None):
    """Learning rate after `cur_nimg` of `total_nimg` training images.

    Pure: the result depends only on the arguments, so a resumed run needs no scheduler state.

    Args:
        schedule: A dict from parse_lr_schedule() (or read back from training_options.json).
            None or the 'none' schedule means "no schedule".
        cur_nimg: Images seen so far. Values outside [0, total_nimg] are clamped, so training past
            the planned length holds the final lr (and a negative count gives the initial lr).
        total_nimg: Images in the whole run (--kimg * 1000), > 0.
        default: What to return for the 'none' schedule, normally the optimizer's configured lr.

    Returns:
        The learning rate as a float, or `default` (None unless given) for the 'none' schedule.

    Raises:
        ValueError: a bad schedule dict or total_nimg <= 0.
    """
    if schedule is None:
        return default
    kind = validate(schedule)
    if kind == 'none':
        return default
    if not total_nimg > 0:
        raise ValueError(f'lr schedule needs total_nimg > 0, got {total_nimg!r}')
    t = min(max(cur_nimg, 0), total_nimg)
    kwargs = {k: v for k, v in schedule.items() if k != 'func_name'}
    return getattr(lr, kind)(t, total_nimg, **kwargs)
