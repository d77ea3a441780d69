"""The study grid on a real one-node Slurm cluster (tools/slurm_local.sh), with pre-emption.

Two shrunk cells go through scripts/slurm_grid.sh on the CPU with a two-minute time limit and the
warning 60 s before it: slurmctld checks limits every 30 s and sends the warning at the first check
within 30 s of its time, so 30-60 s into every attempt; train.py checkpoints and exits 75, the task
requeues itself and the requeued task continues the run. One task is also cancelled mid-run and re-submitted.
The finished runs must hold the same bits as the same cells run without interruption by run_grid.sh.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from scripts import study_grid as sg
from service_helpers import need_root_and, unavailable, wait_until
from training_helpers import read_jsonl, write_image_zip

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, 'tools', 'slurm_local.sh')
CELLS = '^Mix-dataset1/(fixed|ddclr)$'   # grid indices 40 and 42
POINTS = (2, 4)  # long enough that every cell is pre-empted and the cancel lands mid-run, also on an idle machine
# A tiny network trained from scratch; everything the grid fixes for the study is overridden after `--`.
TRAIN_ARGS = ['--cfg=auto', '--resume=noresume', '--cbase=256', '--cmax=16', '--map-depth=2', '--batch=4',
              '--batch-gpu=4', '--gamma=0.01', '--aug=noaug', '--metric-num-gen=8', '--workers=0', '--device=cpu',
              '--tick=0.2', '--snap=1000']
WAIT = 900  # hang guard for each wait on the cluster, seconds


@pytest.fixture(scope='module')
def slurm_cluster():
    """The one-node cluster of tools/slurm_local.sh, started for these tests and stopped after them."""
    need_root_and('slurmctld', 'slurmd', 'munged', 'sbatch', 'scontrol', 'squeue', 'scancel', 'sinfo')
    was_running = subprocess.run(['pgrep', '-x', 'slurmctld'], capture_output=True).returncode == 0
    proc = subprocess.run(['bash', CLUSTER, 'start'], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        unavailable(f'the Slurm daemons did not start: {(proc.stdout + proc.stderr).strip()[-600:]}')
    jobs = []
    try:
        yield jobs
    finally:
        if jobs:
            subprocess.run(['scancel', *jobs], capture_output=True, timeout=60)
        if not was_running:
            subprocess.run(['bash', CLUSTER, 'stop'], capture_output=True, timeout=300)


def _env(tmp_path):
    return dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=str(tmp_path / 'cache'),
                # No network for the runs: the metric detector's download fails at once (fid-helper weights).
                HTTP_PROXY='http://127.0.0.1:9', HTTPS_PROXY='http://127.0.0.1:9',
                STUDY_TIME='00:02:00', STUDY_SIGNAL_SECONDS='60', STUDY_CPUS='1', STUDY_MEM='1G')


def _submit(data, runs, env):
    """slurm_grid.sh DATA RUNS (the two cells); returns (job id or None, stdout)."""
    cmd = ['bash', os.path.join(ROOT, 'scripts', 'slurm_grid.sh'), data, runs, '--only', CELLS,
           '--points', ','.join(map(str, POINTS)), '--', *TRAIN_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r'Submitted batch job (\d+)', proc.stdout)
    return (m.group(1) if m else None), proc.stdout


def _array_tasks(job):
    """Array task ids of `job` still known to squeue (pending, running or requeued)."""
    out = subprocess.run(['squeue', '-h', '-r', '-j', job, '-o', '%K'], capture_output=True, text=True).stdout
    return sorted(int(t) for t in out.split() if t.isdigit())


def _log(runs, job, task):
    path = os.path.join(runs, 'slurm-logs', f'{job}_{task}.out')
    if not os.path.exists(path):
        return ''
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def _continued_and_ticked(text):
    """True once the log shows a continued train.py that has trained at least one tick since."""
    at = text.rfind('Continuing the run from')
    return at >= 0 and re.search(r'^tick \d+', text[at:], re.M) is not None


def _final_state(run_dir):
    from torch_utils import checkpoint
    _, meta, parts = checkpoint.load_latest(run_dir)
    assert meta['finished']
    return parts


def _assert_same_bits(a, b):
    for net in ('G', 'D', 'G_ema'):
        assert a[net].keys() == b[net].keys()
        differ = [k for k in a[net] if not torch.equal(a[net][k], b[net][k])]
        assert differ == [], f'{net}: {differ[:5]}'


def test_grid_on_slurm_survives_preemption_cancel_and_resubmission(slurm_cluster, tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    write_image_zip(str(data / 'Mix-dataset1.zip'), num_images=8, res=16, seed=1)
    write_image_zip(str(data / 'CelebAMask-HQ1.zip'), num_images=8, res=16, seed=2)
    data, runs, ref = str(data), str(tmp_path / 'runs'), str(tmp_path / 'ref')
    env = _env(tmp_path)

    # The same cells without interruption, beside the cluster (run_grid.sh runs them one after another).
    reference = subprocess.Popen(['bash', os.path.join(ROOT, 'scripts', 'run_grid.sh'), data, ref, '--only', CELLS,
                                  '--points', ','.join(map(str, POINTS)), '--', *TRAIN_ARGS],
                                 env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # 1. Submit with a typed GRES (the cluster's GPUs are gpu:a100); cancel task 42 once it has been
    #    pre-empted, continued and trained a tick; let task 40 run to the end.
    job, out = _submit(data, runs, dict(env, STUDY_GRES='gpu:a100:1'))
    assert job is not None, out
    slurm_cluster.append(job)
    assert _array_tasks(job) == [40, 42]
    wait_until(lambda: _continued_and_ticked(_log(runs, job, 42)), WAIT, 'task 42 to be pre-empted and continue')
    subprocess.run(['scancel', f'{job}_42'], check=True, timeout=60)
    wait_until(lambda: not _array_tasks(job), WAIT, f'job {job} to end')

    # 2. Re-submit (default GRES gpu:1): only the cancelled run is left, and it continues.
    fixed, ddclr = (sg.grid()[i] for i in (40, 42))
    assert sg.run_status(fixed, runs, points=POINTS) == 'finished'
    assert sg.run_status(ddclr, runs, points=POINTS) != 'finished'
    job2, out = _submit(data, runs, env)
    assert job2 is not None, out
    slurm_cluster.append(job2)
    assert _array_tasks(job2) == [42]
    wait_until(lambda: not _array_tasks(job2), WAIT, f'job {job2} to end')

    # 3. A third submission finds nothing to do.
    job3, out = _submit(data, runs, env)
    assert job3 is None and 'nothing to submit' in out

    ref_out, _ = reference.communicate(timeout=WAIT)
    assert reference.returncode == 0, ref_out[-3000:]

    logs = {40: _log(runs, job, 40), 42: _log(runs, job, 42) + _log(runs, job2, 42)}
    for run in (fixed, ddclr):
        assert sg.run_status(run, runs, points=POINTS) == 'finished'
        (run_dir,) = sg.find_run_dirs(run.outdir(runs))    # every attempt continued the one run dir
        log = logs[run.index]
        starts = log.count(f'task {run.index} on ')    # train.py started
        requeues = log.count('; requeueing ') - log.count('came before train.py started')
        print(f'{run.name}: train.py started {starts} times, pre-empted {requeues} times')
        assert requeues >= 1, log[-3000:]                   # pre-empted at least once while training
        if run is fixed:
            assert starts == requeues + 1
        else:
            assert starts == requeues + 2                   # plus the scancel and the re-submission
        # Each attempt after the first continued once from a checkpoint; nothing was trained or evaluated twice.
        with open(os.path.join(run_dir, 'log.txt'), encoding='utf-8') as f:
            assert f.read().count('Continuing the run from') == starts - 1
        kimgs = [row['Progress/kimg']['mean'] for row in read_jsonl(os.path.join(run_dir, 'stats.jsonl'))]
        assert kimgs == sorted(set(kimgs)), kimgs
        with open(os.path.join(run_dir, 'metric-fid50k_full.jsonl'), encoding='utf-8') as f:
            evaluated = [json.loads(line)['kimg'] for line in f]
        assert len(evaluated) == len(set(evaluated)) and {int(k) for k in evaluated} >= set(POINTS), evaluated
        # The same bits as the uninterrupted run of the same command.
        (ref_dir,) = sg.find_run_dirs(run.outdir(ref))
        _assert_same_bits(_final_state(run_dir), _final_state(ref_dir))
