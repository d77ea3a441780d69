"""The benchmark scripts still run (tiny sizes, CPU) and print their same-run ratio.

Timings are not asserted: speed targets live in the scripts' output, not in tests. These tests only
keep the scripts from rotting when the code they time changes.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS='2', CUDA_VISIBLE_DEVICES='')
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def _ratio(text, pattern):
    m = re.search(pattern, text)
    assert m, text[-2000:]
    value = float(m.group(1))
    assert value > 0
    return value


@pytest.mark.slow
def test_bench_dataset_tool():
    out = _bench('bench_dataset_tool.py', '--count', '4', '--size', '64', '--resolution', '32', '--workers', '2')
    _ratio(out, r'speed-up\s*:\s*([0-9.]+)x')
    assert 'outputs byte-identical: True' in out


@pytest.mark.slow
def test_bench_ops_reference_timings_on_cpu():
    out = _bench('bench_ops.py', '--scale', '8', '--iters', '1')
    for op in ('upfirdn2d', 'bias_act'):
        assert re.search(rf'^{op} .* fwd\+bwd\s+[0-9.]+', out, re.M), out[-2000:]


@pytest.mark.slow
def test_bench_training_cpu():
    # Smoke size: 2 iterations of a 16-channel network per case (the ratio's value is not asserted).
    out = _bench('bench_training.py', '--device', 'cpu', '--kimg', '0.016', '--warmup', '1', '--res', '16',
                 '--cbase', '256', '--cmax', '16')
    _ratio(out, r'is ([0-9.]+)x the speed of')


@pytest.mark.slow
def test_bench_metrics_cpu():
    out = _bench('bench_metrics.py', '--device', 'cpu', '--resolution', '32', '--num-gen', '8', '--num-real', '8',
                 '--cbase', '512', '--batch', '8', '--repeats', '1', '--nn-dim', '64')
    _ratio(out, r'feature-space .*ratio\s+([0-9.]+)x')
    _ratio(out, r'shared pass .*prdc50k_full.*memo50k_full.*pull50k_full.*ratio\s+([0-9.]+)x')
    _ratio(out, r'ratio\s+([0-9.]+)x')
    assert re.search(r'detector \S+ sha256 [0-9a-f]{16}', out), out[-2000:]
    assert re.search(r"'fid8_full': [0-9.]+", out), out[-2000:]


@pytest.mark.slow
def test_bench_augment_cpu():
    out = _bench('bench_augment.py', '--res', '32', '--repeats', '1')
    for quantity in ('time', 'memory'):
        for mode in ('fwd', 'fwd+r1'):
            _ratio(out, rf'augment\s+32 {re.escape(mode)}\s+{quantity} .* ratio ([0-9.]+)x')
    assert re.search(r'^host reads per call\s+fitted 1 ', out, re.M), out  # the padding, read once
    assert re.search(r'^host reads per call\s+full\s+0 ', out, re.M), out
