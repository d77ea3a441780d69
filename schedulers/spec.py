"""`--lr-schedule` specs: parse them, validate them, name them, and evaluate the result.

A spec is `NAME` or `NAME:key=value,key=value,...`, where NAME is a preset (one row of the study's
Table 1, see PRESETS) or a schedule kind (see KINDS). Keys given after a preset override the
preset's values, so `ddclr:cycles=6` is the study's DDCLR with 6 cycles.

Parsing yields a plain, JSON-serialisable dict: 'func_name' (a function in schedulers.lr) plus its
keyword arguments, e.g.
    {'func_name': 'schedulers.lr.ddclr', 'base': 0.0005, 'max': 0.003, 'cycles': 12}
This is what training_options.json stores, and lr_at() evaluates it.

Every user error raises ValueError with a one-line message that names the problem and lists the
valid choices; CLIs turn it into their own error type (click.BadParameter in train.py).
"""

import math
import numbers

FUNC_PREFIX = 'schedulers.lr.'
DEFAULT_SPEC = 'none'  # what train.py uses when --lr-schedule is absent

# ----------------------------------------------------------------------------
# Schedule kinds: parameters, defaults and constraints.

REQUIRED = object()  # marks a parameter without a default


class _Param:
    """One schedule parameter: default (or REQUIRED), a check, and the words for its error."""

    def __init__(self, default, check, rule, integer=False):
        self.default = default
        self.check = check        # value -> bool
        self.rule = rule          # e.g. 'must be >= 0'
        self.integer = integer    # value must be a whole number (stored as int)


def _nonneg():
    return _Param(REQUIRED, lambda v: v >= 0, 'must be >= 0')


def _pos(default=REQUIRED):
    return _Param(default, lambda v: v > 0, 'must be > 0')


_CYCLES = _Param(12, lambda v: v > 0, 'must be > 0')  # study: 12 cycles over the run

# kind -> (parameters in display order, short title, formula for docs/logs)
KINDS = {
    'none':   ({}, 'optimizer lr, unscheduled', 'lr = the optimizer\'s configured lr'),
    'fixed':  ({'lr': _pos()}, 'fixed', 'lr'),
    'clr':    ({'base': _nonneg(), 'max': _pos(), 'cycles': _CYCLES},
               'cyclical', 'base + (max-base)*w(t)'),
    'dclr':   ({'base': _nonneg(), 'max': _pos(), 'cycles': _CYCLES},
               'damped cyclical', 'base + (max-base)*r(t)*w(t), r=(T-t)/(T+t)'),
    'ddclr':  ({'base': _nonneg(), 'max': _pos(), 'cycles': _CYCLES},
               'descending damped cyclical', '(base + (max-base)*w(t))*r(t), r=(T-t)/(T+t)'),
    'exp':    ({'first': _pos(), 'final': _pos()}, 'exponential', 'first*(final/first)^(t/T)'),
    'cosine': ({'lr': _pos(), 'min': _Param(0.0, lambda v: v >= 0, 'must be >= 0'),
                'warmup': _Param(0.0, lambda v: 0 <= v < 1, 'must be in [0, 1) (a fraction of the run)')},
               'cosine', 'linear warm-up, then min + (lr-min)*(1+cos(pi*s))/2'),
    'step':   ({'lr': _pos(), 'gamma': _Param(0.1, lambda v: v > 0, 'must be > 0'),
                'drops': _Param(3, lambda v: v >= 1, 'must be a whole number >= 1', integer=True)},
               'step decay', 'lr*gamma^k over drops+1 equal stages'),
}

# ----------------------------------------------------------------------------
# Presets: one per row of the study's Table 1 (paper-ddclr-ja.txt), 12 cycles over the run (sec. 2.4).

PRESETS = {
    'fixed': 'fixed:lr=0.0025',                              # Fixed
    'clr':   'clr:base=0.0005,max=0.003,cycles=12',          # CLR
    'ddclr': 'ddclr:base=0.0005,max=0.003,cycles=12',        # DDCLR (the proposal)
    'dclr1': 'dclr:base=0.0005,max=0.003,cycles=12',         # DCLR(1)
    'dclr2': 'dclr:base=0.0001,max=0.003,cycles=12',         # DCLR(2)
    'dclr3': 'dclr:base=0,max=0.003,cycles=12',              # DCLR(3)
    'exp1':  'exp:first=0.003,final=0.0005',                 # ExpLR(1)
    'exp2':  'exp:first=0.003,final=0.0001',                 # ExpLR(2)
}

# Preset -> the row label used in the paper, for logs and plots.
PAPER_LABELS = {
    'fixed': 'Fixed', 'clr': 'CLR', 'ddclr': 'DDCLR', 'dclr1': 'DCLR(1)', 'dclr2': 'DCLR(2)',
    'dclr3': 'DCLR(3)', 'exp1': 'ExpLR(1)', 'exp2': 'ExpLR(2)',
}


def list_choices():
    """Every name `--lr-schedule` accepts before the ':' (presets first, then the other kinds).

    Returns:
        List of names, e.g. ['fixed', 'clr', 'ddclr', 'dclr1', ..., 'none', 'dclr', 'exp', ...].
    """
    return list(PRESETS) + [k for k in KINDS if k not in PRESETS]


def _choices_text():
    kinds = ', '.join(KINDS)
    presets = ', '.join(PRESETS)
    return f'schedules: {kinds}; presets: {presets}'


def usage(kind):
    """One-line usage of a kind, e.g. 'ddclr:base=BASE,max=MAX[,cycles=12]'."""
    params = KINDS[kind][0]
    required = [f'{k}={k.upper()}' for k, p in params.items() if p.default is REQUIRED]
    optional = [f'[,{k}={p.default:g}]' for k, p in params.items() if p.default is not REQUIRED]
    text = ','.join(required) + ''.join(optional)
    return kind + (':' + text.lstrip(',') if text else '')


# ----------------------------------------------------------------------------
# Parsing.


def _split(spec):
    """'name:k=v,k=v' -> (name, [(k, v_text), ...]) with whitespace stripped and names lower-cased."""
    if not isinstance(spec, str):
        raise ValueError(f'lr schedule must be a string like "ddclr" or "ddclr:base=0.0005", got {spec!r}')
    name, _, rest = spec.strip().partition(':')
    name = name.strip().lower()
    if not name:
        raise ValueError(f'empty lr schedule {spec!r}; {_choices_text()}')
    pairs = []
    for item in rest.split(',') if rest.strip() else []:
        key, eq, value = item.partition('=')
        key = key.strip().lower()
        if not eq or not key:
            raise ValueError(f'bad item {item.strip()!r} in {spec!r}: expected key=value')
        pairs.append((key, value.strip()))
    return name, pairs


def _resolve(name, spec):
    """Name -> (kind, starting values): a preset's values, or an empty start for a bare kind."""
    if name in PRESETS:
        return _parse_explicit(PRESETS[name])
    if name in KINDS:
        return name, {}
    where = f' in {spec!r}' if spec.strip().lower() != name else ''
    raise ValueError(f'unknown lr schedule {name!r}{where}; {_choices_text()}')


def _to_number(kind, key, text, spec):
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'{kind}: {key}={text!r} is not a number (in {spec!r}); usage: {usage(kind)}') from None


def _parse_explicit(spec):
    """Parse a spec whose name is a kind (used for presets), without validation."""
    name, pairs = _split(spec)
    return name, {key: float(text) for key, text in pairs}


def parse_lr_schedule(spec):
    """Parse an `--lr-schedule` value into a validated, JSON-serialisable schedule dict.

    Args:
        spec: 'none', a preset name ('ddclr', 'dclr2', ...), a kind with parameters
            ('ddclr:base=0.0005,max=0.003,cycles=12'), or a preset with overrides ('exp1:final=0.0002').
            Names are case-insensitive; spaces are ignored.

    Returns:
        dict with 'func_name' ('schedulers.lr.<kind>') and every parameter of that kind, defaults
        filled in.

    Raises:
        ValueError: one line naming the bad part of the spec and listing the valid choices.
    """
    name, pairs = _split(spec)
    kind, values = _resolve(name, spec)
    seen = set()
    for key, text in pairs:
        if key not in KINDS[kind][0]:
            keys = ', '.join(KINDS[kind][0]) or '(none)'
            raise ValueError(f'{kind}: unknown key {key!r} in {spec!r}; keys: {keys}; usage: {usage(kind)}')
        if key in seen:
            raise ValueError(f'{kind}: key {key!r} given twice in {spec!r}')
        seen.add(key)
        values[key] = _to_number(kind, key, text, spec)
    return _complete(kind, values, spec)


def _complete(kind, values, context):
    """Fill defaults, check every value, and build the schedule dict."""
    params = KINDS[kind][0]
    out = {'func_name': FUNC_PREFIX + kind}
    for key, p in params.items():
        if key not in values:
            if p.default is REQUIRED:
                raise ValueError(f'{kind}: missing {key}= in {context!r}; usage: {usage(kind)}{_presets_hint(kind)}')
            out[key] = p.default
            continue
        out[key] = _check_value(kind, key, p, values[key], context)
    _check_relations(kind, out, context)
    return out


def _presets_hint(kind):
    names = [n for n, s in PRESETS.items() if s.startswith(kind + ':')]
    return f'; or use a preset: {", ".join(names)}' if names else ''


def _check_value(kind, key, p, v, context):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f'{kind}: {key}={v!r} is not a number (in {context!r}); usage: {usage(kind)}')
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f'{kind}: {key}={v} is not finite (in {context!r}); usage: {usage(kind)}')
    if not p.check(v) or (p.integer and not v.is_integer()):
        raise ValueError(f'{kind}: {key}={v:g} {p.rule} (in {context!r}); usage: {usage(kind)}')
    # Whole numbers that count something (cycles, drops) are stored as ints for readable JSON.
    if p.integer or (key == 'cycles' and v.is_integer()):
        return int(v)
    return v


def _check_relations(kind, d, context):
    if kind in ('clr', 'dclr', 'ddclr') and d['max'] < d['base']:
        raise ValueError(f'{kind}: max={d["max"]:g} must be >= base={d["base"]:g} (in {context!r})')
    if kind == 'cosine' and d['min'] > d['lr']:
        raise ValueError(f'cosine: min={d["min"]:g} must be <= lr={d["lr"]:g} (in {context!r})')


def validate(schedule):
    """Check a schedule dict (e.g. read back from training_options.json) and return its kind.

    Only functions in schedulers.lr are accepted, so a hand-edited JSON cannot make lr_at call
    arbitrary code.

    Returns:
        The kind name ('ddclr', ...).

    Raises:
        ValueError: unknown func_name, missing/unknown keys, or bad values.
    """
    if not isinstance(schedule, dict) or 'func_name' not in schedule:
        raise ValueError(f'lr schedule must be a dict with "func_name", got {schedule!r}')
    func_name = schedule['func_name']
    kind = func_name[len(FUNC_PREFIX):] if isinstance(func_name, str) and func_name.startswith(FUNC_PREFIX) else None
    if kind not in KINDS:
        raise ValueError(f'unknown lr schedule function {func_name!r}; {_choices_text()}')
    params = KINDS[kind][0]
    extra = sorted(set(schedule) - set(params) - {'func_name'})
    if extra:
        keys = ', '.join(params) or '(none)'
        raise ValueError(f'{kind}: unknown key(s) {", ".join(extra)} in {schedule!r}; keys: {keys}')
    missing = [k for k in params if k not in schedule]
    if missing:
        raise ValueError(f'{kind}: missing key(s) {", ".join(missing)} in {schedule!r}; usage: {usage(kind)}')
    _complete(kind, {k: v for k, v in schedule.items() if k != 'func_name'}, schedule)  # value checks
    return kind


# ----------------------------------------------------------------------------
# Naming.


def _fmt(v):
    # repr() of a float round-trips exactly, so to_spec() -> parse gives back the identical dict.
    return repr(v) if isinstance(v, float) else str(v)


def to_spec(schedule):
    """The canonical spec string of a schedule dict; parse_lr_schedule(to_spec(d)) == d.

    Args:
        schedule: A dict from parse_lr_schedule (or None, meaning 'none').

    Returns:
        e.g. 'ddclr:base=0.0005,max=0.003,cycles=12'.
    """
    if schedule is None:
        return 'none'
    kind = validate(schedule)
    args = ','.join(f'{k}={_fmt(schedule[k])}' for k in KINDS[kind][0])
    return kind + (':' + args if args else '')


def preset_name(schedule):
    """The preset a schedule dict equals, or None."""
    if schedule is None:
        return None
    for name, spec in PRESETS.items():
        if parse_lr_schedule(spec) == schedule:
            return name
    return None


def describe(schedule):
    """One line for logs: canonical spec, preset/paper name if any, and the formula.

    Example: 'ddclr:base=0.0005,max=0.003,cycles=12 [preset ddclr = DDCLR] descending damped
    cyclical, lr = (base + (max-base)*w(t))*r(t), r=(T-t)/(T+t)'.
    """
    if schedule is None or validate(schedule) == 'none':
        return 'none (no schedule: the optimizer keeps its configured lr)'
    kind = validate(schedule)
    _, title, formula = KINDS[kind]
    name = preset_name(schedule)
    tag = f' [preset {name} = {PAPER_LABELS[name]}]' if name else ''
    return f'{to_spec(schedule)}{tag} {title}, lr = {formula}'
