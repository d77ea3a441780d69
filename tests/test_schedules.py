"""Learning-rate schedules (schedulers/): closed forms, shape properties, parsing, CLI.

Expected values are written out from the issue's / paper's formulas (paper-ddclr-ja.txt eqs. 1-3,
Table 1), not read back from the implementation. T = 100 kimg and 12 cycles as in the study.
"""

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import schedulers
from schedulers import lr_at, parse_lr_schedule, to_spec, describe

T = 100_000          # images in the study's runs (100 kimg)
C = 12               # cycles over the run (paper sec. 2.4)
PEAK1 = T / (2 * C)  # first crest of the triangle wave
R_PEAK1 = (T - PEAK1) / (T + PEAK1)  # damping (T-t)/(T+t) there = 23/25
CYCLICAL = ['clr', 'ddclr', 'dclr1', 'dclr2', 'dclr3']

# The table of study presets, written out independently of schedulers.PRESETS.
STUDY_PRESETS = {
    'fixed': {'func_name': 'schedulers.lr.fixed', 'lr': 0.0025},
    'clr':   {'func_name': 'schedulers.lr.clr', 'base': 0.0005, 'max': 0.003, 'cycles': 12},
    'ddclr': {'func_name': 'schedulers.lr.ddclr', 'base': 0.0005, 'max': 0.003, 'cycles': 12},
    'dclr1': {'func_name': 'schedulers.lr.dclr', 'base': 0.0005, 'max': 0.003, 'cycles': 12},
    'dclr2': {'func_name': 'schedulers.lr.dclr', 'base': 0.0001, 'max': 0.003, 'cycles': 12},
    'dclr3': {'func_name': 'schedulers.lr.dclr', 'base': 0.0, 'max': 0.003, 'cycles': 12},
    'exp1':  {'func_name': 'schedulers.lr.exp', 'first': 0.003, 'final': 0.0005},
    'exp2':  {'func_name': 'schedulers.lr.exp', 'first': 0.003, 'final': 0.0001},
}


def _lr(spec, t, total=T):
    return lr_at(parse_lr_schedule(spec), t, total)


# ----------------------------------------------------------------------------
# Presets and closed-form values.


@pytest.mark.parametrize('name', sorted(STUDY_PRESETS))
def test_every_preset_parses_to_the_study_values(name):
    assert parse_lr_schedule(name) == STUDY_PRESETS[name]


def test_presets_cover_exactly_the_study_rows():
    assert set(schedulers.PRESETS) == set(STUDY_PRESETS)


# (spec, lr at t=0, at the first peak T/24, at T/2, at T); 12 cycles put T/2 on a cycle boundary (w=0).
CLOSED_FORMS = [
    ('fixed', 0.0025, 0.0025, 0.0025, 0.0025),
    ('clr', 0.0005, 0.003, 0.0005, 0.0005),
    ('dclr1', 0.0005, 0.0005 + 0.0025 * R_PEAK1, 0.0005, 0.0005),
    ('dclr2', 0.0001, 0.0001 + 0.0029 * R_PEAK1, 0.0001, 0.0001),
    ('dclr3', 0.0, 0.003 * R_PEAK1, 0.0, 0.0),
    # b(t) + d(t) w(t) = (base + (max-base) w) r: at the peak w=1 -> max*r; at T/2 r=1/3, w=0; at T r=0.
    ('ddclr', 0.0005, 0.003 * R_PEAK1, 0.0005 / 3, 0.0),
    ('exp1', 0.003, 0.003 * (0.0005 / 0.003) ** (1 / 24), math.sqrt(0.003 * 0.0005), 0.0005),
    ('exp2', 0.003, 0.003 * (0.0001 / 0.003) ** (1 / 24), math.sqrt(0.003 * 0.0001), 0.0001),
]


@pytest.mark.parametrize('spec,at0,at_peak,at_mid,at_end', CLOSED_FORMS)
def test_closed_form_values(spec, at0, at_peak, at_mid, at_end):
    got = [_lr(spec, t) for t in (0, PEAK1, T // 2, T)]
    assert got == pytest.approx([at0, at_peak, at_mid, at_end], rel=1e-12, abs=1e-15)
    assert all(isinstance(v, float) for v in got)


def test_ddclr_peak_at_mid_training_with_odd_cycles():
    # 3 cycles: T/2 is the crest of cycle 2 (w=1), and r(T/2) = 1/3, so lr = max/3 for ddclr and
    # base + (max-base)/3 for dclr.
    assert _lr('ddclr:cycles=3', T / 2) == pytest.approx(0.003 / 3, rel=1e-12)
    assert _lr('dclr:base=0.0005,max=0.003,cycles=3', T / 2) == pytest.approx(0.0005 + 0.0025 / 3, rel=1e-12)


def test_triangle_wave_is_linear_between_knots():
    # Quarter of a cycle: w = 1/2; three quarters: w = 1/2 again (falling side).
    assert _lr('clr', T / (4 * C)) == pytest.approx(0.0005 + 0.0025 * 0.5, rel=1e-12)
    assert _lr('clr', 3 * T / (4 * C)) == pytest.approx(0.0005 + 0.0025 * 0.5, rel=1e-12)
    # Start of cycle 2 is a trough again.
    assert _lr('clr', T / C) == pytest.approx(0.0005, rel=1e-9)


def test_triangle_is_exact_on_integer_knots():
    # T divisible by 2*cycles: knots land on whole images and the wave hits 0 and 1 exactly.
    total = 120_000
    sched = parse_lr_schedule('clr')
    assert lr_at(sched, 5_000, total) == 0.003
    assert lr_at(sched, 10_000, total) == 0.0005


# ----------------------------------------------------------------------------
# Shape properties of the cyclical family.


def _local_maxima(values):
    v = np.asarray(values)
    return np.flatnonzero((v[1:-1] > v[:-2]) & (v[1:-1] >= v[2:])) + 1


@pytest.mark.parametrize('name', CYCLICAL)
@pytest.mark.parametrize('cycles', [1, 5, 12])
def test_exactly_cycles_peaks(name, cycles):
    sched = parse_lr_schedule(f'{name}:cycles={cycles}')
    grid = np.arange(0, T + 1, 7)  # 7 images apart: no grid point lands on a crest by accident
    values = [lr_at(sched, int(t), T) for t in grid]
    assert len(_local_maxima(values)) == cycles


@pytest.mark.parametrize('name', ['ddclr', 'dclr1', 'dclr2', 'dclr3'])
def test_damped_envelope_is_non_increasing(name):
    sched = parse_lr_schedule(name)
    crests = [lr_at(sched, (k + 0.5) * T / C, T) for k in range(C)]
    troughs = [lr_at(sched, k * T / C, T) for k in range(C + 1)]
    assert all(a > b for a, b in zip(crests, crests[1:])), crests  # amplitude shrinks every cycle
    assert all(a >= b - 1e-18 for a, b in zip(troughs, troughs[1:])), troughs
    if name == 'ddclr':  # descending floor: strictly lower every cycle, reaching 0 at T
        assert all(a > b for a, b in zip(troughs, troughs[1:]))
        assert troughs[-1] == 0.0
    else:  # dclr keeps its floor at base
        assert troughs == pytest.approx([sched['base']] * (C + 1), abs=1e-15)


@pytest.mark.parametrize('name', CYCLICAL)
def test_cyclical_values_stay_in_range(name):
    sched = parse_lr_schedule(name)
    values = np.array([lr_at(sched, t, T) for t in range(0, T + 1, 13)])
    low = 0.0 if name == 'ddclr' else sched['base']
    assert values.min() >= low - 1e-15
    assert values.max() <= sched['max'] + 1e-15


# ----------------------------------------------------------------------------
# exp, cosine, step.


def test_exp_endpoints_and_geometric_midpoint():
    sched = parse_lr_schedule('exp:first=0.004,final=0.0001')
    assert lr_at(sched, 0, T) == 0.004
    assert lr_at(sched, T, T) == pytest.approx(0.0001, rel=1e-12)
    assert lr_at(sched, T / 2, T) == pytest.approx(math.sqrt(0.004 * 0.0001), rel=1e-12)
    # log lr is linear in t: equal steps in t multiply lr by the same ratio.
    a, b, c = (lr_at(sched, t, T) for t in (10_000, 30_000, 50_000))
    assert b / a == pytest.approx(c / b, rel=1e-12)


def test_cosine_closed_forms_without_warmup():
    s = parse_lr_schedule('cosine:lr=0.002,min=0.0002')
    assert lr_at(s, 0, T) == pytest.approx(0.002, rel=1e-12)
    assert lr_at(s, T / 4, T) == pytest.approx(0.0002 + 0.0018 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert lr_at(s, T / 2, T) == pytest.approx(0.0011, rel=1e-12)
    assert lr_at(s, T, T) == pytest.approx(0.0002, rel=1e-12)


def test_cosine_with_warmup():
    s = parse_lr_schedule('cosine:lr=0.002,warmup=0.1')
    assert s['min'] == 0.0
    assert lr_at(s, 0, T) == 0.0
    assert lr_at(s, 5_000, T) == pytest.approx(0.001, rel=1e-12)   # halfway up the ramp
    assert lr_at(s, 10_000, T) == pytest.approx(0.002, rel=1e-12)  # warm-up boundary: the peak
    assert lr_at(s, 55_000, T) == pytest.approx(0.001, rel=1e-12)  # halfway through the cosine
    assert lr_at(s, T, T) == pytest.approx(0.0, abs=1e-15)


def test_step_closed_forms():
    s = parse_lr_schedule('step:lr=0.01,gamma=0.5,drops=3')  # 4 stages of T/4
    assert lr_at(s, 0, T) == 0.01
    assert lr_at(s, T // 4 - 1, T) == 0.01
    assert lr_at(s, T // 4, T) == 0.005
    assert lr_at(s, T // 2, T) == 0.0025
    assert lr_at(s, 3 * T // 4, T) == 0.00125
    assert lr_at(s, T, T) == 0.00125  # the last stage includes t = T
    defaults = {'func_name': 'schedulers.lr.step', 'lr': 0.01, 'gamma': 0.1, 'drops': 3}
    assert parse_lr_schedule('step:lr=0.01') == defaults


# ----------------------------------------------------------------------------
# Clamping, 'none', purity.


@pytest.mark.parametrize('spec', list(STUDY_PRESETS) + ['cosine:lr=0.002,warmup=0.1', 'step:lr=0.01'])
def test_progress_is_clamped_to_the_run(spec):
    s = parse_lr_schedule(spec)
    assert lr_at(s, T + 1, T) == lr_at(s, T, T)
    assert lr_at(s, 5 * T, T) == lr_at(s, T, T)
    assert lr_at(s, -100, T) == lr_at(s, 0, T)


@pytest.mark.parametrize('total', [0, -5])
def test_total_must_be_positive(total):
    with pytest.raises(ValueError, match='total_nimg'):
        lr_at(parse_lr_schedule('ddclr'), 0, total)


def test_none_means_the_optimizer_lr():
    s = parse_lr_schedule('none')
    assert s == {'func_name': 'schedulers.lr.none'}
    assert schedulers.DEFAULT_SPEC == 'none'
    assert lr_at(s, 123, T) is None
    assert lr_at(s, 123, T, default=0.0025) == 0.0025
    assert lr_at(None, 123, T, default=0.002) == 0.002
    assert 'none' in describe(s) and to_spec(s) == 'none'
    # A real schedule ignores `default`.
    assert lr_at(parse_lr_schedule('fixed'), 0, T, default=1.0) == 0.0025


@pytest.mark.parametrize('spec', list(STUDY_PRESETS) + ['cosine:lr=0.002,warmup=0.05', 'step:lr=0.01'])
def test_lr_at_is_pure(spec):
    s = parse_lr_schedule(spec)
    before = copy.deepcopy(s)
    ts = [0, 777, 4_166, 50_000, 99_999, T]
    forward = [lr_at(s, t, T) for t in ts]
    backward = [lr_at(s, t, T) for t in reversed(ts)][::-1]
    interleaved = [lr_at(s, t, T) for t in ts for _ in range(2)][::2]
    assert forward == backward == interleaved
    assert s == before  # the schedule dict is not modified


# ----------------------------------------------------------------------------
# Parsing: round trips, overrides, errors.

ROUND_TRIP = list(STUDY_PRESETS) + [
    'none', 'ddclr:cycles=6', 'clr:base=1e-4,max=2.5e-3,cycles=7.5', 'exp:first=0.01,final=0.0003',
    'cosine:lr=0.002,min=1e-5,warmup=0.05', 'step:lr=0.003,gamma=0.3,drops=2', 'dclr:base=0.00011,max=0.0031',
]


@pytest.mark.parametrize('spec', ROUND_TRIP)
def test_round_trips(spec):
    d = parse_lr_schedule(spec)
    assert parse_lr_schedule(to_spec(d)) == d
    assert describe(d).split(' ')[0] == to_spec(d) or d['func_name'].endswith('.none')
    from_json = json.loads(json.dumps(d))
    assert from_json == d
    for t in (0, 1_234, PEAK1, 61_111, T):
        assert lr_at(from_json, t, T) == lr_at(d, t, T)


def test_describe_names_the_paper_row():
    assert 'DDCLR' in describe(parse_lr_schedule('ddclr'))
    assert 'DCLR(2)' in describe(parse_lr_schedule('dclr:base=0.0001,max=0.003'))  # same values as dclr2
    assert '\n' not in describe(parse_lr_schedule('exp1'))


def test_preset_overrides_and_loose_syntax():
    assert parse_lr_schedule('ddclr:cycles=6') == {**STUDY_PRESETS['ddclr'], 'cycles': 6}
    assert parse_lr_schedule('exp1:final=0.0002') == {**STUDY_PRESETS['exp1'], 'final': 0.0002}
    assert parse_lr_schedule('  DDCLR : Cycles = 6 , base=5e-4 ') == {**STUDY_PRESETS['ddclr'], 'cycles': 6}
    assert parse_lr_schedule('ddclr:') == STUDY_PRESETS['ddclr']


def test_list_choices():
    choices = schedulers.list_choices()
    assert len(choices) == len(set(choices))
    assert set(choices) == set(STUDY_PRESETS) | set(schedulers.KINDS)


BAD_SPECS = [
    # (spec, substrings the message must contain)
    ('adam', ["'adam'", 'ddclr', 'dclr1', 'exp2', 'cosine', 'none']),
    ('', ['empty', 'presets']),
    ('ddclr:bse=0.001', ["'bse'", 'base, max, cycles']),
    ('ddclr:max=abc', ['max', "'abc'", 'not a number']),
    ('fixed:lr=-0.001', ['lr=-0.001', '> 0']),
    ('clr:base=-0.0001,max=0.003', ['base=-0.0001', '>= 0']),
    ('clr:cycles=0', ['cycles=0', '> 0']),
    ('ddclr:max=0.0001', ['max=0.0001', 'base=0.0005']),
    ('ddclr:max=inf', ['max', 'finite']),
    ('ddclr:cycles=6,cycles=7', ["'cycles'", 'twice']),
    ('ddclr:max', ["'max'", 'key=value']),
    ('dclr', ['missing base', 'dclr1, dclr2, dclr3']),
    ('exp:first=0.003', ['missing final', 'exp1, exp2']),
    ('exp:first=0.003,final=0', ['final=0', '> 0']),
    ('cosine:lr=0.002,warmup=1', ['warmup=1', '[0, 1)']),
    ('cosine:lr=0.002,min=0.003', ['min=0.003', 'lr=0.002']),
    ('step:lr=0.01,drops=2.5', ['drops=2.5', 'whole number']),
    ('none:lr=0.1', ["'lr'", '(none)']),
]


@pytest.mark.parametrize('spec,parts', BAD_SPECS)
def test_bad_specs_raise_one_clear_line(spec, parts):
    with pytest.raises(ValueError) as info:
        parse_lr_schedule(spec)
    message = str(info.value)
    assert '\n' not in message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize('bad', [
    {'func_name': 'os.system', 'command': 'true'},
    {'func_name': 'schedulers.lr.triangle', 't': 0},
    {'func_name': 'schedulers.lr.ddclr', 'base': 0.0005, 'max': 0.003},                        # missing cycles
    {'func_name': 'schedulers.lr.ddclr', 'base': 0.0005, 'max': 0.003, 'cycles': 12, 'x': 1},  # extra key
    {'func_name': 'schedulers.lr.fixed', 'lr': '0.0025'},                                      # string value
    {'func_name': 'schedulers.lr.fixed', 'lr': True},
    {'lr': 0.0025},
])
def test_bad_schedule_dicts_are_rejected_by_lr_at(bad):
    with pytest.raises(ValueError):
        lr_at(bad, 0, T)


# ----------------------------------------------------------------------------
# Layering and the command line.


def test_import_pulls_in_neither_torch_nor_matplotlib():
    code = ('import sys, schedulers, schedulers.plot, schedulers.__main__; '
            'print(sorted(m for m in ("torch", "matplotlib") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=schedulers.__path__[0] + '/..')
    assert out.stdout.strip() == '[]'


def test_lr_curve_hits_the_true_crests():
    from schedulers.plot import lr_curve
    kimg, values = lr_curve(parse_lr_schedule('clr'), 100, points=50)  # 50 points alone would miss crests
    assert kimg[0] == 0 and kimg[-1] == 100 and np.all(np.diff(kimg) > 0)
    assert values.max() == pytest.approx(0.003, rel=1e-12)
    assert len(_local_maxima(values)) == 12


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path):
    from schedulers import plot
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # makes `import matplotlib` fail
    with pytest.raises(RuntimeError, match='matplotlib'):
        plot.plot_schedules([parse_lr_schedule('ddclr')], 100, str(tmp_path / 'x.png'))


def test_plot_cli_writes_png(tmp_path):
    pytest.importorskip('matplotlib')
    from schedulers.__main__ import main
    out = tmp_path / 'curves.png'
    assert main(['plot', 'ddclr', 'exp1', 'cosine:lr=0.002,warmup=0.1', '--kimg', '10', '--out', str(out),
                 '--points', '50']) == 0
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [p.name for p in tmp_path.iterdir()] == ['curves.png']  # no temp files left behind


@pytest.mark.parametrize('argv,part', [
    (['plot', 'bogus', '--out', 'x.png'], "unknown lr schedule 'bogus'"),
    (['plot', 'none', '--out', 'x.png'], "'none'"),
    (['plot', 'ddclr', '--kimg', '0', '--out', 'x.png'], '--kimg'),
    (['show', 'ddclr:cycles=0'], 'cycles=0'),
])
def test_cli_errors_exit_2_with_one_line(argv, part, capsys, tmp_path, monkeypatch):
    from schedulers.__main__ import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert part in last
    assert not (tmp_path / 'x.png').exists()


def test_show_cli_prints_values(capsys):
    from schedulers.__main__ import main
    assert main(['show', 'ddclr', '--kimg', '100', '--at', '0', '50', '100']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('ddclr:base=0.0005,max=0.003,cycles=12')
    printed = [float(line.split()[-1]) for line in lines[1:]]
    assert printed == pytest.approx([0.0005, 0.0005 / 3, 0.0], rel=1e-5)  # printed with 6 significant digits
