"""The study grid: 80 runs with the paper's settings, and the shell drivers' dry runs and skipping."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from click.testing import CliRunner

from scripts import study_grid as sg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ['fixed', 'clr', 'ddclr', 'dclr1', 'dclr2', 'dclr3', 'exp1', 'exp2']
DATASETS = [f'CelebAMask-HQ{k}' for k in range(1, 6)] + [f'Mix-dataset{k}' for k in range(1, 6)]


def parse_command(line):
    """'python train.py --a=1 --b=x' -> ('train.py', {'--a': '1', '--b': 'x'}); every option used once."""
    tokens = shlex.split(line)
    assert tokens[1] == 'train.py'
    opts = {}
    for tok in tokens[2:]:
        key, _, value = tok.partition('=')
        assert key not in opts, f'{key} given twice'
        opts[key] = value
    return tokens[0], opts


def write_fake_run(outdir, kimgs, name='00000-fake', metric='fid50k_full'):
    """A run dir as train.py writes it: training_options.json plus metric lines at the given kimg."""
    run_dir = os.path.join(outdir, name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump({'run_dir': run_dir}, f)
    with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), 'w') as f:
        for k in kimgs:
            f.write(json.dumps({'results': {metric: 20.0 + k / 100}, 'metric': metric,
                                'snapshot_pkl': f'network-snapshot-{k:06d}.pkl', 'kimg': k}) + '\n')
    return run_dir


# ----------------------------------------------------------------------------
# The grid itself.


def check_grid_commands(lines, data_dir, runs_dir, gpus='1'):
    """Every (dataset, preset) once, with the study's options."""
    seen = set()
    for line in lines:
        _, opts = parse_command(line)
        dataset = os.path.splitext(os.path.basename(opts['--data']))[0]
        preset = opts['--lr-schedule']
        assert (dataset, preset) not in seen
        seen.add((dataset, preset))
        k = re.search(r'\d+$', dataset).group(0)
        assert opts['--data'] == os.path.join(data_dir, f'{dataset}.zip')
        assert opts['--metric-data'] == os.path.join(data_dir, f'CelebAMask-HQ{k}.zip')  # paper Table 2
        assert opts['--outdir'] == os.path.join(runs_dir, dataset, preset)
        assert opts['--kimg'] == '100'
        assert opts['--snap-kimg'] == '40,60,80,100'
        assert opts['--metrics'] == 'fid50k_full,prdc50k_full,memo50k_full,pull50k_full'
        assert opts['--resume'] == 'ffhq512'
        assert opts['--cfg'] == 'paper512'
        assert opts['--gpus'] == gpus
        assert (opts['--batch'], opts['--batch-gpu'], opts['--gamma']) == ('64', '8', '0.5')
        assert (opts['--mirror'], opts['--aug']) == ('0', 'ada')
    assert seen == {(d, p) for d in DATASETS for p in PRESETS}


def test_grid_has_80_distinct_runs_in_paper_order():
    runs = sg.grid()
    assert len(runs) == 80
    assert [r.index for r in runs] == list(range(80))
    assert [(r.dataset, r.schedule) for r in runs] == [(d, p) for d in DATASETS for p in PRESETS]
    assert {r.real_set for r in runs if r.dataset.endswith('3')} == {'CelebAMask-HQ3'}


def test_commands_cli_lists_80_runs_with_study_options():
    result = CliRunner().invoke(sg.cli, ['commands', '/data', '/runs', '--python', 'py'])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 80
    assert all(shlex.split(line)[0] == 'py' for line in lines)
    check_grid_commands(lines, '/data', '/runs')


def test_only_and_index_select_runs():
    runner = CliRunner()
    out = runner.invoke(sg.cli, ['commands', 'D', 'R', '--only', r'^Mix-dataset[12]/dclr']).output.splitlines()
    labels = sorted(f'{os.path.basename(parse_command(l)[1]["--data"])[:-4]}/{parse_command(l)[1]["--lr-schedule"]}'
                    for l in out)
    assert labels == [f'Mix-dataset{k}/dclr{j}' for k in (1, 2) for j in (1, 2, 3)]
    assert runner.invoke(sg.cli, ['indices', '--only', 'Mix-dataset1/ddclr$']).output.strip() == str(5 * 8 + 2)
    one = runner.invoke(sg.cli, ['commands', 'D', 'R', '--index', '11', '--gpus', '4', '--', '--workers=2'])
    _, opts = parse_command(one.output.strip())
    assert (opts['--data'], opts['--lr-schedule'], opts['--gpus'], opts['--workers']) == \
        (os.path.join('D', 'CelebAMask-HQ2.zip'), 'dclr1', '4', '2')
    bad = runner.invoke(sg.cli, ['commands', 'D', 'R', '--only', 'no-such-run'])
    assert bad.exit_code != 0 and 'matches none' in bad.output


def test_grid_presets_match_schedulers():
    schedulers = pytest.importorskip('schedulers')
    assert set(sg.PRESET_NAMES) <= set(schedulers.PRESETS)
    assert {p: sg.PAPER_LABELS[p] for p in sg.PRESET_NAMES} == {p: schedulers.PAPER_LABELS[p] for p in sg.PRESET_NAMES}


# ----------------------------------------------------------------------------
# Reading metric files and run status.


def test_read_metric_points_last_line_wins_and_skips_bad_lines(tmp_path):
    path = tmp_path / 'metric-fid50k_full.jsonl'
    lines = [
        {'results': {'fid50k_full': 30.0}, 'kimg': 40},
        {'results': {'fid50k_full': 25.0}, 'snapshot_pkl': 'network-snapshot-000060.pkl'},  # no kimg field
        {'results': {'fid50k_full': 28.0}, 'kimg': 40.32},  # re-evaluated after a resume; 40.32 -> 40
        {'results': {}, 'kimg': 80},                         # no value
    ]
    path.write_text('\n'.join(json.dumps(l) for l in lines) + '\n{"results": {"fid5')  # torn last line
    assert sg.read_metric_points(str(tmp_path)) == {40: 28.0, 60: 25.0}
    assert sg.read_metric_points(str(tmp_path / 'nowhere')) == {}


def test_run_status(tmp_path):
    runs_dir = str(tmp_path)
    run = sg.grid()[0]
    assert sg.run_status(run, runs_dir) == 'not started'
    write_fake_run(run.outdir(runs_dir), [40, 60], name='00000-a')
    assert sg.run_status(run, runs_dir) == 'partial 2/4'
    write_fake_run(run.outdir(runs_dir), [0, 40, 60, 80, 100], name='00001-b')
    assert sg.run_status(run, runs_dir) == 'finished'


# ----------------------------------------------------------------------------
# Shell drivers (dry runs only: nothing is trained).


def run_script(name, *args, env=None):
    full_env = {**os.environ, 'PYTHON': sys.executable, **(env or {})}
    return subprocess.run(['bash', os.path.join(ROOT, 'scripts', name), *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=120)


def test_run_grid_dry_run_prints_80_commands(tmp_path):
    data, runs = str(tmp_path / 'data'), str(tmp_path / 'runs')
    proc = run_script('run_grid.sh', data, runs, '--dry-run')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 80
    check_grid_commands(lines, data, runs)
    assert all(shlex.split(l)[0] == sys.executable for l in lines)


def test_run_grid_skips_finished_and_continues_partial(tmp_path):
    data, runs = str(tmp_path / 'data'), str(tmp_path / 'runs')
    write_fake_run(os.path.join(runs, 'Mix-dataset3', 'ddclr'), [40, 60, 80, 100])
    write_fake_run(os.path.join(runs, 'CelebAMask-HQ1', 'clr'), [40, 60])  # interrupted: must be re-run
    proc = run_script('run_grid.sh', data, runs, '--dry-run', '--gpus', '2')
    assert proc.returncode == 0, proc.stderr
    commands = [l for l in proc.stdout.splitlines() if not l.startswith('#')]
    skipped = [l for l in proc.stdout.splitlines() if l.startswith('#')]
    assert len(commands) == 79
    assert skipped == [f'# finished: Mix-dataset3/ddclr ({os.path.join(runs, "Mix-dataset3", "ddclr")})']
    outdirs = {parse_command(l)[1]['--outdir'] for l in commands}
    assert os.path.join(runs, 'CelebAMask-HQ1', 'clr') in outdirs
    assert os.path.join(runs, 'Mix-dataset3', 'ddclr') not in outdirs
    assert {parse_command(l)[1]['--gpus'] for l in commands} == {'2'}


def test_run_grid_relative_paths_become_absolute(tmp_path):
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'run_grid.sh'), 'd', 'r', '-n', '--only', 'HQ2/exp1'],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    _, opts = parse_command(proc.stdout.strip())
    assert opts['--data'] == os.path.join(str(tmp_path), 'd', 'CelebAMask-HQ2.zip')


def test_run_grid_rejects_bad_arguments(tmp_path):
    assert run_script('run_grid.sh', 'only-one-dir').returncode == 2
    assert run_script('run_grid.sh', 'a', 'b', '--bogus').returncode == 2


def test_slurm_dry_run_prints_sbatch_and_80_tasks(tmp_path):
    data, runs = str(tmp_path / 'data'), str(tmp_path / 'runs')
    write_fake_run(os.path.join(runs, 'CelebAMask-HQ1', 'fixed'), [40, 60, 80, 100])  # index 0: finished
    proc = run_script('slurm_grid.sh', data, runs, '--dry-run', '--gpus', '2',
                      env={'STUDY_TIME': '03:00:00', 'STUDY_MAX_PARALLEL': '8', 'STUDY_PARTITION': 'gpu'})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    sbatch = shlex.split(lines[0])
    assert sbatch[0] == 'sbatch'
    array = next(a for a in sbatch if a.startswith('--array='))
    assert array == '--array=' + ','.join(str(i) for i in range(1, 80)) + '%8'
    for expected in ('--gres=gpu:2', '--time=03:00:00', '--partition=gpu', f'--chdir={ROOT}'):
        assert expected in sbatch
    assert sbatch[sbatch.index('--task') + 1:sbatch.index('--task') + 5] == [data, runs, '--gpus', '2']
    tasks = lines[1:]
    assert len(tasks) == 80
    assert tasks[0] == f'[task 0] # finished: CelebAMask-HQ1/fixed ({os.path.join(runs, "CelebAMask-HQ1", "fixed")})'
    commands = [re.sub(r'^\[task \d+\] ', '', t) for t in tasks[1:]]
    assert [int(re.match(r'\[task (\d+)\]', t).group(1)) for t in tasks] == list(range(80))
    for t, line in zip(tasks[1:], commands):
        index = int(re.match(r'\[task (\d+)\]', t).group(1))
        _, opts = parse_command(line)
        run = sg.grid()[index]
        assert (opts['--lr-schedule'], opts['--outdir']) == (run.schedule, run.outdir(runs))


def test_slurm_task_mode_runs_the_indexed_command(tmp_path):
    """Inside the array job the script runs grid command SLURM_ARRAY_TASK_ID (here a fake python echoes it)."""
    fake_python = tmp_path / 'python'
    fake_python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then exec {sys.executable} "$@"; fi\necho RAN "$@"\n')
    fake_python.chmod(0o755)
    data, runs = str(tmp_path / 'data'), str(tmp_path / 'runs')
    proc = subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'slurm_grid.sh'), '--task', data, runs],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=dict(os.environ, PYTHON=str(fake_python), SLURM_ARRAY_TASK_ID='42'))
    assert proc.returncode == 0, proc.stderr
    ran = [l for l in proc.stdout.splitlines() if l.startswith('RAN ')]
    assert len(ran) == 1
    opts = dict(t.partition('=')[::2] for t in ran[0].split()[2:])
    assert (opts['--data'], opts['--lr-schedule']) == (os.path.join(data, 'Mix-dataset1.zip'), 'ddclr')


def _fake_python(tmp_path, fail_on=None):
    """An interpreter stand-in: `-m ...` goes to the real Python, anything else (train.py) is logged."""
    script = tmp_path / 'python'
    fail = f'case "$*" in *{fail_on}*) exit 3;; esac\n' if fail_on else ''
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then exec {sys.executable} "$@"; fi\n'
                      f'echo "$@" >> {tmp_path / "ran.log"}\n{fail}exit 0\n')
    script.chmod(0o755)
    return str(script)


def make_data(tmp_path):
    """A DATA dir with (empty) zips of all 10 datasets: run_grid.sh checks they exist before running."""
    data = tmp_path / 'd'
    data.mkdir(exist_ok=True)
    for name in DATASETS:
        (data / f'{name}.zip').write_bytes(b'')
    return str(data)


def test_run_grid_runs_pending_commands_in_order(tmp_path):
    runs = str(tmp_path / 'runs')
    write_fake_run(os.path.join(runs, 'CelebAMask-HQ2', 'clr'), [40, 60, 80, 100])
    env = {'PYTHON': _fake_python(tmp_path)}
    proc = run_script('run_grid.sh', make_data(tmp_path), runs, '--only', '^CelebAMask-HQ2/', env=env)
    assert proc.returncode == 0, proc.stderr
    ran = (tmp_path / 'ran.log').read_text().splitlines()
    assert [dict(t.partition('=')[::2] for t in l.split()[1:])['--lr-schedule'] for l in ran] == \
        ['fixed', 'ddclr', 'dclr1', 'dclr2', 'dclr3', 'exp1', 'exp2']  # clr was finished
    assert 'skip: finished: CelebAMask-HQ2/clr' in proc.stdout


def test_run_grid_stops_at_a_failure_unless_keep_going(tmp_path):
    env = {'PYTHON': _fake_python(tmp_path, fail_on='lr-schedule=clr')}
    proc = run_script('run_grid.sh', make_data(tmp_path), str(tmp_path / 'r'), '--only', '^Mix-dataset5/', env=env)
    assert proc.returncode == 1 and 'failed' in proc.stderr
    assert len((tmp_path / 'ran.log').read_text().splitlines()) == 2  # fixed, then the failing clr
    (tmp_path / 'ran.log').unlink()
    proc = run_script('run_grid.sh', str(tmp_path / 'd'), str(tmp_path / 'r'), '--only', '^Mix-dataset5/',
                      '--keep-going', env=env)
    assert proc.returncode == 1 and '1 run(s) failed' in proc.stderr
    assert len((tmp_path / 'ran.log').read_text().splitlines()) == 8


def test_read_metric_series_accepts_relabelled_keys_by_count(tmp_path):
    """Lines with fewer generated images (num_gen recorded, key fid256_full) are read under their count."""
    lines = [
        {'results': {'fid50k_full': 30.0}, 'kimg': 40},                                  # standard line
        {'results': {'fid256_full': 300.0}, 'kimg': 40, 'num_gen': 256},
        {'results': {'fid256_full': 290.0}, 'kimg': 60.02, 'num_gen': 256},
        {'results': {'fid50k_full': 29.0}, 'kimg': 60, 'num_gen': 50000},                # count written out
        {'results': {'other_key': 1.0}, 'kimg': 80},                                     # no count: not accepted
        {'results': {'a_64': 1.0, 'b_64': 2.0}, 'kimg': 80, 'num_gen': 64},              # ambiguous: skipped
    ]
    (tmp_path / 'metric-fid50k_full.jsonl').write_text('\n'.join(json.dumps(l) for l in lines) + '\n')
    series = sg.read_metric_series(str(tmp_path))
    assert series == {50000: {40: 30.0, 60: 29.0}, 256: {40: 300.0, 60: 290.0}}
    # Same coverage of the points: the larger count wins; more coverage beats a larger count.
    assert sg.choose_series(series) == (50000, {40: 30.0, 60: 29.0})
    series[256][80] = 280.0
    assert sg.choose_series(series) == (256, {40: 300.0, 60: 290.0, 80: 280.0})
    assert sg.choose_series(series, points=(40, 60)) == (50000, {40: 30.0, 60: 29.0})
    assert sg.choose_series({}) == (None, {})
    assert sg.read_metric_points(str(tmp_path), points=(40, 60)) == {40: 30.0, 60: 29.0}


def test_run_status_with_other_points(tmp_path):
    runs_dir = str(tmp_path)
    run = sg.grid()[3]
    write_fake_run(run.outdir(runs_dir), [1, 2])
    assert sg.run_status(run, runs_dir) == 'partial 0/4'     # the grid's default points
    assert sg.run_status(run, runs_dir, points=(1, 2)) == 'finished'
    assert sg.run_status(run, runs_dir, points=(1, 2, 3)) == 'partial 2/3'
    assert sg.points_status({1: 5.0}, (1,)) == 'finished'


# ----------------------------------------------------------------------------
# Replicates, shrunk grids and status.json.


def write_status(run_dir, state, evaluated, snap, metrics=('fid50k_full',), cur_kimg=None):
    """status.json as train.py writes it at every checkpoint and at the end."""
    os.makedirs(run_dir, exist_ok=True)
    status = dict(state=state, cur_kimg=float(cur_kimg if cur_kimg is not None else max(evaluated, default=0)),
                  total_kimg=float(max(snap)), evaluated_kimg=list(evaluated), metrics=list(metrics),
                  snap_kimg=list(snap))
    with open(os.path.join(run_dir, 'status.json'), 'w') as f:
        json.dump(status, f)


def test_repeats_give_r_times_80_distinct_commands_with_their_seeds():
    result = CliRunner().invoke(sg.cli, ['commands', 'D', 'R', '--repeats', '3'])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 240 and len(set(lines)) == 240
    parsed = [parse_command(l)[1] for l in lines]
    assert len({o['--outdir'] for o in parsed}) == 240
    for k in range(3):
        block = parsed[k * 80:(k + 1) * 80]
        assert {o.get('--seed', '0') for o in block} == {str(k)}
        suffix = f'-seed{k}' if k else ''
        assert [o['--outdir'] for o in block] == [os.path.join('R', d, p + suffix) for d in DATASETS for p in PRESETS]
    # Replicate 0 is exactly today's single-replicate grid, so earlier runs count as replicate 0.
    single = CliRunner().invoke(sg.cli, ['commands', 'D', 'R']).output.splitlines()
    assert lines[:80] == single
    assert [r.index for r in sg.grid(3)] == list(range(240))
    indices = CliRunner().invoke(sg.cli, ['indices', '--repeats', '2', '--only', 'Mix-dataset1/ddclr$']).output
    assert indices.strip() == '42,122'
    bad = CliRunner().invoke(sg.cli, ['commands', 'D', 'R', '--index', '80'])
    assert bad.exit_code != 0 and '--index 80' in bad.output


def test_points_shrink_the_commands():
    result = CliRunner().invoke(sg.cli, ['commands', 'D', 'R', '--points', '2,1', '--index', '3'])
    _, opts = parse_command(result.output.strip())
    assert (opts['--snap-kimg'], opts['--kimg']) == ('1,2', '2')
    bad = CliRunner().invoke(sg.cli, ['commands', 'D', 'R', '--points', 'one'])
    assert bad.exit_code == 2 and '--points' in bad.output


def test_status_json_decides_when_present(tmp_path):
    run = sg.grid()[0]
    outdir = run.outdir(str(tmp_path))
    run_dir = write_fake_run(outdir, [1, 2])                      # metric lines at both points ...
    write_status(run_dir, 'running', [1, 2], [1, 2, 3])           # ... but the run was asked for 3 and is running
    assert sg.run_status(run, str(tmp_path), points=(1, 2)) == 'partial 2/2'
    write_status(run_dir, 'finished', [1, 2], [1, 2, 3])          # finished, yet one requested point never evaluated
    assert sg.run_status(run, str(tmp_path), points=(1, 2)) == 'partial 2/2'
    write_status(run_dir, 'finished', [1.024, 2.048], [1, 2])     # snapshots land a few images past the point
    assert sg.run_status(run, str(tmp_path), points=(1, 2)) == 'finished'
    assert sg.run_status(run, str(tmp_path)) == 'partial 0/4'     # the full grid's points were never asked for
    write_status(run_dir, 'finished', [1, 2], [1, 2], metrics=['kid50k_full'])
    assert sg.run_status(run, str(tmp_path), points=(1, 2)) == 'partial 0/2'
    with open(os.path.join(run_dir, 'status.json'), 'w') as f:
        f.write('{"state": "fini')                                # torn: the metric file decides again
    assert sg.run_status(run, str(tmp_path), points=(1, 2)) == 'finished'
    assert sg.read_status(run_dir) is None


FAKE_TRAIN = '''
import json, os, sys
opts = dict(a.partition('=')[::2] for a in sys.argv[2:] if '=' in a)
with open(os.environ['FAKE_LOG'], 'a') as f:
    f.write(' '.join(sys.argv[1:]) + '\\n')
outdir = opts['--outdir']
run_dir = os.path.join(outdir, '00000-fake')
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
    json.dump({}, f)
snap = [int(k) for k in opts['--snap-kimg'].split(',')]
interrupt = os.environ.get('FAKE_INTERRUPT', '')
state = 'interrupted' if interrupt and interrupt in outdir else 'finished'
done = snap[:1] if state == 'interrupted' else snap
with open(os.path.join(run_dir, 'status.json'), 'w') as f:
    json.dump(dict(state=state, cur_kimg=float(done[-1]), total_kimg=float(opts['--kimg']),
                   evaluated_kimg=done, metrics=['fid50k_full'], snap_kimg=snap), f)
sys.exit(75 if state == 'interrupted' else 0)
'''


def _fake_train_python(tmp_path):
    """An interpreter whose train.py records a run dir with status.json (interrupted where FAKE_INTERRUPT matches)."""
    (tmp_path / 'fake_train.py').write_text(FAKE_TRAIN)
    script = tmp_path / 'python'
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then exec {sys.executable} "$@"; fi\n'
                      f'exec {sys.executable} {tmp_path / "fake_train.py"} "$@"\n')
    script.chmod(0o755)
    return str(script)


def _eq_opts(line):
    return dict(t.partition('=')[::2] for t in shlex.split(line) if '=' in t)


def test_shrunk_grid_rerun_skips_finished_and_continues_interrupted(tmp_path):
    data, runs, log = make_data(tmp_path), str(tmp_path / 'runs'), tmp_path / 'ran.log'
    env = {'PYTHON': _fake_train_python(tmp_path), 'FAKE_LOG': str(log),
           'FAKE_INTERRUPT': os.path.join('Mix-dataset1', 'dclr1')}
    args = (data, runs, '--only', '^Mix-dataset1/', '--repeats', '2', '--points', '1,2', '--', '--kimg', '2')
    proc = run_script('run_grid.sh', *args, env=env)
    assert proc.returncode == 75 and 'interrupted' in proc.stderr      # the 4th run of 16 stopped the grid
    first = log.read_text().splitlines()
    assert [_eq_opts(l)['--lr-schedule'] for l in first] == ['fixed', 'clr', 'ddclr', 'dclr1']
    assert all('--snap-kimg=1,2' in l and '--kimg=2' in l for l in first)

    log.unlink()
    env['FAKE_INTERRUPT'] = 'no-such-run'
    proc = run_script('run_grid.sh', *args, env=env)
    assert proc.returncode == 0, proc.stderr
    again = [_eq_opts(l) for l in log.read_text().splitlines()]
    assert len(again) == 13                                             # 16 runs - 3 finished
    assert again[0]['--outdir'] == os.path.join(runs, 'Mix-dataset1', 'dclr1')  # continued, same outdir
    assert again[-1]['--outdir'] == os.path.join(runs, 'Mix-dataset1', 'exp2-seed1')
    assert proc.stdout.count('skip: finished') == 3
    proc = run_script('run_grid.sh', '--dry-run', *args, env=env)
    assert proc.returncode == 0 and proc.stdout.count('# finished:') == 16


def test_run_grid_help_and_missing_data(tmp_path):
    proc = run_script('run_grid.sh', '--help')
    assert proc.returncode == 0
    for option in ('--dry-run', '--gpus', '--only', '--points', '--repeats', '--keep-going', 'TRAIN_ARGS'):
        assert option in proc.stdout
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'CelebAMask-HQ1.zip').write_bytes(b'')
    proc = run_script('run_grid.sh', str(data), str(tmp_path / 'runs'), '--dry-run', '--only', '^(CelebAMask-HQ1|Mix-dataset2)/')
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 16
    warning = proc.stderr.splitlines()[0]
    assert 'warning' in warning and 'Mix-dataset2.zip' in warning and 'CelebAMask-HQ2.zip' in warning
    assert 'CelebAMask-HQ1.zip' not in warning and 'does not exist yet' in proc.stderr
    proc = run_script('run_grid.sh', str(data), str(tmp_path / 'runs'), '--only', '^Mix-dataset2/',
                      env={'PYTHON': _fake_python(tmp_path)})
    assert proc.returncode == 1 and 'Mix-dataset2.zip' in proc.stderr
    assert not (tmp_path / 'ran.log').exists()                          # nothing was started
    proc = run_script('run_grid.sh', make_data(tmp_path), str(tmp_path / 'runs'), '-n', '--only', '^Mix-dataset2/')
    assert proc.returncode == 0 and 'lacks' not in proc.stderr


def test_slurm_sbatch_requests_the_signal_and_requeue(tmp_path):
    runs = str(tmp_path / 'runs')
    proc = run_script('slurm_grid.sh', make_data(tmp_path), runs, '--dry-run', '--repeats', '2', '--points', '1,2')
    assert proc.returncode == 0, proc.stderr
    sbatch = shlex.split(proc.stdout.splitlines()[0])
    assert '--signal=B:USR1@300' in sbatch and '--requeue' in sbatch
    assert next(a for a in sbatch if a.startswith('--array=')) == '--array=' + ','.join(map(str, range(160)))
    task_args = sbatch[sbatch.index('--task'):]
    assert task_args[task_args.index('--repeats') + 1] == '2' and task_args[task_args.index('--points') + 1] == '1,2'
    assert len(proc.stdout.splitlines()) == 161
    proc = run_script('slurm_grid.sh', make_data(tmp_path), runs, '--dry-run', env={'STUDY_SIGNAL_SECONDS': '600'})
    assert '--signal=B:USR1@600' in shlex.split(proc.stdout.splitlines()[0])
    proc = run_script('slurm_grid.sh', '--help')
    assert proc.returncode == 0 and '--repeats' in proc.stdout and 'scontrol requeue' in proc.stdout


def _slurm_task(tmp_path, train_body, signal_after=None, to_train_too=False):
    """Run slurm_grid.sh --task with a fake train.py and a fake scontrol; return (proc, scontrol calls).

    signal_after: a signal for the task's shell once train.py has written tmp_path/ready (and, with
    to_train_too, for train.py too, whose pid is in that file: Slurm signals every process of a job).
    """
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / 'scontrol').chmod(0o755)
    (tmp_path / 'fake_train.py').write_text(train_body)
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then exec {sys.executable} "$@"; fi\n'
                      f'exec {sys.executable} {tmp_path / "fake_train.py"} "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), SLURM_ARRAY_TASK_ID='42', SLURM_JOB_ID='1234',
               SLURM_ARRAY_JOB_ID='1200',
               PATH=f'{bin_dir}:{os.environ["PATH"]}')
    proc = subprocess.Popen(['bash', os.path.join(ROOT, 'scripts', 'slurm_grid.sh'), '--task', str(tmp_path / 'd'),
                             str(tmp_path / 'r')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    if signal_after is not None:
        ready = tmp_path / 'ready'
        for _ in range(600):                  # wait until train.py has installed its handler (hang guard: 60 s)
            if ready.exists() and (ready.read_text() or not to_train_too):
                break
            subprocess.run(['sleep', '0.1'])
        proc.send_signal(signal_after)
        if to_train_too:
            os.kill(int(ready.read_text()), signal_after)
    out, err = proc.communicate(timeout=120)
    calls = (tmp_path / 'scontrol.log').read_text().splitlines() if (tmp_path / 'scontrol.log').exists() else []
    return proc.returncode, out, err, calls


WAIT_FOR_SIGNAL = f'''
import os, signal, sys, time
def stop(sig, frame):
    open({{ready!r}}.replace('ready', 'got-signal'), 'w').write(str(sig))
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
open({{ready!r}}, 'w').write(str(os.getpid()))
time.sleep(100)
'''


def test_slurm_task_forwards_the_signal_and_requeues_on_75(tmp_path):
    import signal
    body = WAIT_FOR_SIGNAL.format(ready=str(tmp_path / 'ready'))
    rc, out, err, calls = _slurm_task(tmp_path, body, signal_after=signal.SIGUSR1)
    assert rc == 0, err
    assert (tmp_path / 'got-signal').read_text() == str(int(signal.SIGUSR1))   # train.py itself got SIGUSR1
    assert calls == ['requeue 1200_42']       # this task only: job 1200 would be the whole array
    assert 'requeueing 1200_42' in out


def test_slurm_task_passes_other_exit_codes_through_without_requeue(tmp_path):
    rc, out, err, calls = _slurm_task(tmp_path, 'import sys; sys.exit(3)\n')
    assert rc == 3 and calls == []
    rc, out, err, calls = _slurm_task(tmp_path, 'pass\n')
    assert rc == 0 and calls == []


@pytest.mark.parametrize('script', ['run_grid.sh', 'slurm_grid.sh'])
@pytest.mark.parametrize('bad', [('--repeats', '0'), ('--points', '1,x'), ('--gpus', 'two'), ('--points',)])
def test_drivers_reject_bad_values_in_one_line(tmp_path, script, bad):
    proc = run_script(script, str(tmp_path / 'd'), str(tmp_path / 'r'), '--dry-run', *bad)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.splitlines()[0].startswith(f'{script}: {bad[0]}')


def test_slurm_submission_calls_sbatch_with_the_array_and_requeue(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'sbatch').write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {tmp_path / "sbatch.log"}\n'
                                    'echo "Submitted batch job 77"\n')
    (bin_dir / 'sbatch').chmod(0o755)
    runs = str(tmp_path / 'runs')
    write_fake_run(os.path.join(runs, 'Mix-dataset1', 'ddclr'), [40, 60, 80, 100])
    proc = run_script('slurm_grid.sh', make_data(tmp_path), runs, '--only', '^Mix-dataset1/', '--repeats', '2',
                      env={'PATH': f'{bin_dir}:{os.environ["PATH"]}'})
    assert proc.returncode == 0 and 'Submitted batch job 77' in proc.stdout, proc.stderr
    args = (tmp_path / 'sbatch.log').read_text().splitlines()
    assert '--array=40,41,43,44,45,46,47,120,121,122,123,124,125,126,127' in args  # 42 (seed 0 ddclr) finished
    assert '--signal=B:USR1@300' in args and '--requeue' in args and '--open-mode=append' in args
    assert os.path.isdir(os.path.join(runs, 'slurm-logs'))


@pytest.mark.parametrize('gres, expected', [(None, ['--gres=gpu:2']), ('gpu:a100:1', ['--gres=gpu:a100:1']), ('', [])])
def test_slurm_gres_defaults_to_gpus_and_takes_a_typed_form_or_none(tmp_path, gres, expected):
    env = {} if gres is None else {'STUDY_GRES': gres}
    proc = run_script('slurm_grid.sh', make_data(tmp_path), str(tmp_path / 'r'), '--dry-run', '--gpus', '2', env=env)
    assert proc.returncode == 0, proc.stderr
    sbatch = shlex.split(proc.stdout.splitlines()[0])
    assert [a for a in sbatch if a.startswith('--gres')] == expected
    assert sbatch[sbatch.index('--task') + 3:sbatch.index('--task') + 5] == ['--gpus', '2']  # train.py --gpus stays


def test_slurm_gres_with_spaces_is_one_line_error(tmp_path):
    proc = run_script('slurm_grid.sh', make_data(tmp_path), str(tmp_path / 'r'), '--dry-run',
                      env={'STUDY_GRES': 'gpu:a100 1'})
    assert proc.returncode == 2 and proc.stdout == '' and proc.stderr.startswith('slurm_grid.sh: STUDY_GRES')


def test_slurm_task_warning_before_train_py_catches_it_still_requeues(tmp_path):
    """SIGUSR1 may come while train.py starts (Slurm sends it up to 30 s early): killed by it, the task
    still requeues, and the requeued task continues from the last checkpoint."""
    import signal
    body = f'import time\nopen({str(tmp_path / "ready")!r}, "w").close()\ntime.sleep(100)\n'  # no handler
    rc, out, err, calls = _slurm_task(tmp_path, body, signal_after=signal.SIGUSR1)
    assert rc == 0, err
    assert calls == ['requeue 1200_42'] and 'stopped by the warning before it could checkpoint' in out


def test_slurm_task_is_not_requeued_after_sigterm(tmp_path):
    """scancel sends SIGTERM to every process of the job: train.py checkpoints (exit 75), and the task
    must stay cancelled instead of requeueing itself."""
    import signal
    body = WAIT_FOR_SIGNAL.format(ready=str(tmp_path / 'ready')).replace('signal.SIGUSR1', 'signal.SIGTERM')
    rc, out, err, calls = _slurm_task(tmp_path, body, signal_after=signal.SIGTERM, to_train_too=True)
    assert (tmp_path / 'got-signal').read_text() == str(int(signal.SIGTERM))
    assert rc == 75, err
    assert calls == [] and 'requeueing' not in out
