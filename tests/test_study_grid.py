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
        assert opts['--metrics'] == 'fid50k_full'
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


def test_run_grid_runs_pending_commands_in_order(tmp_path):
    runs = str(tmp_path / 'runs')
    write_fake_run(os.path.join(runs, 'CelebAMask-HQ2', 'clr'), [40, 60, 80, 100])
    env = {'PYTHON': _fake_python(tmp_path)}
    proc = run_script('run_grid.sh', str(tmp_path / 'd'), runs, '--only', '^CelebAMask-HQ2/', env=env)
    assert proc.returncode == 0, proc.stderr
    ran = (tmp_path / 'ran.log').read_text().splitlines()
    assert [dict(t.partition('=')[::2] for t in l.split()[1:])['--lr-schedule'] for l in ran] == \
        ['fixed', 'ddclr', 'dclr1', 'dclr2', 'dclr3', 'exp1', 'exp2']  # clr was finished
    assert 'skip: finished: CelebAMask-HQ2/clr' in proc.stdout


def test_run_grid_stops_at_a_failure_unless_keep_going(tmp_path):
    env = {'PYTHON': _fake_python(tmp_path, fail_on='lr-schedule=clr')}
    proc = run_script('run_grid.sh', str(tmp_path / 'd'), str(tmp_path / 'r'), '--only', '^Mix-dataset5/', env=env)
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
