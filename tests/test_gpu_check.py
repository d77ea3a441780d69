"""benchmarks/gpu_check.sh keeps working: its --cpu-smoke mode end to end, and its argument errors.

No timing is asserted; the numbers only have to be there and be positive.
"""

import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu_check.sh')


def _run(*args):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='2', CUDA_VISIBLE_DEVICES='')
    return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_cpu_smoke_writes_one_complete_json(tmp_path):
    out = tmp_path / 'check.json'
    res = _run('--cpu-smoke', '--out', str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ['check.json']  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask
    report = json.loads(out.read_text())
    assert report['environment']['mode'] == 'cpu-smoke'
    steps = report['steps']
    assert list(steps) == ['gpu_tests', 'train_b32_bg32', 'train_b64_bg8', 'ops', 'fid']
    assert all(s['status'] == 'ok' and s['rc'] == 0 for s in steps.values()), steps

    tests = steps['gpu_tests']
    assert tests['tests'] > 0 and tests['skipped'] == tests['tests'] and tests['passed'] == 0  # no GPU here
    for name in ('train_b32_bg32', 'train_b64_bg8'):
        runs = steps[name]['runs']
        assert len(runs) == 2 and all(r['sec_per_kimg'] > 0 for r in runs), runs
    rows = steps['ops']['rows']
    assert {r['case'].split()[0] for r in rows} >= {'upsample2d', 'downsample2d', 'upfirdn2d', 'bias_act'}
    assert all(r['ref_ms'] > 0 and r['cuda_ms'] is None for r in rows)
    fid = steps['fid']
    assert fid['num_gen'] == 8 and "'fid8_full'" in fid['results']
    assert fid['fid50k_full_estimate_s'] == pytest.approx(fid['total_s'] * 50000 / 8)


def test_missing_output_folder_is_one_line_and_writes_nothing(tmp_path):
    res = _run('--cpu-smoke', '--out', str(tmp_path / 'no' / 'such' / 'x.json'))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and '--out' in lines[0] and 'does not exist' in lines[0], res.stderr
    assert os.listdir(tmp_path) == []


def test_gpu_mode_without_a_gpu_is_one_line(tmp_path):
    res = _run('--out', str(tmp_path / 'x.json'))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        'gpu_check: no CUDA device found (use --cpu-smoke to check the script on a CPU)']
    assert os.listdir(tmp_path) == []
