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
    assert list(steps) == ['gpu_tests', 'selftest', 'train_b32_bg32', 'train_b64_bg8', 'ops', 'fid', 'augment']
    assert all(s['status'] == 'ok' and s['rc'] == 0 for s in steps.values()), steps

    assert steps['selftest']['device'] is None and steps['selftest']['rows'] == []  # no GPU: one line, no rows
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
    augment = steps['augment']
    assert augment['host_reads_per_call'] == {'fitted': 1, 'full': 0}
    assert {(r['res'], r['mode']) for r in augment['rows']} == {(32, 'fwd'), (32, 'fwd+r1')}
    assert len(augment['rows']) == 4 and all(r['ratio'] > 0 for r in augment['rows']), augment['rows']


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


def _module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(ROOT, 'benchmarks', 'gpu_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parsers_read_the_gpu_form_of_each_benchmark():
    """The GPU runs cannot happen here: their output format is checked on samples of it."""
    gc = _module()
    train = gc._parse_train('fp16 mixed precision            12.34 sec/kimg   peak GPU mem  20.50 GiB\n'
                            'fp32 (baseline)                 30.10 sec/kimg   peak GPU mem  35.00 GiB\n\n'
                            'device cuda, 512x512, cfg paper512, batch 32: fp16 ... is 2.44x the speed of fp32\n', '')
    assert train['runs'] == [dict(label='fp16 mixed precision', sec_per_kimg=12.34, peak_gib=20.5),
                             dict(label='fp32 (baseline)', sec_per_kimg=30.1, peak_gib=35.0)]
    ops = gc._parse_ops('device=cuda:0 dtype=torch.float16 scale=1/1 iters=10\n'
                        f'{"case":42s} {"pass":8s}     ref ms    cuda ms   ratio\n'
                        f'{"upsample2d  fir4  [16,256,64,64]":42s} {"fwd":8s}      1.250      0.500    2.50x\n'
                        f'{"bias_act lrelu mapping [32,512]":42s} {"fwd+bwd":8s}      0.100      0.200    0.50x\n', '')
    assert ops['rows'] == [
        dict(case='upsample2d  fir4  [16,256,64,64]', pass_='fwd', ref_ms=1.25, cuda_ms=0.5, ratio=2.5),
        dict(case='bias_act lrelu mapping [32,512]', pass_='fwd+bwd', ref_ms=0.1, cuda_ms=0.2, ratio=0.5)]
    fid = gc._parse_fid('generation         900.0 img/s (batch_gen=64)   baseline     300.0 img/s (batch_gen=4)'
                        '   ratio  3.00x\nfeatures          2000.0 img/s\n'
                        "fid50k_full          40.0 s total (1000 reals + 5000 fakes): {'fid5k_full': 300.1}\n", '')
    assert fid['fid50k_full_estimate_s'] == pytest.approx(400.0) and fid['generation_ratio_vs_batch4'] == 3.0
    with pytest.raises(ValueError):
        gc._parse_train('Traceback (most recent call last):\n', '')


def test_a_step_past_its_time_is_recorded_not_fatal(tmp_path):
    gc = _module()
    sleeper = lambda smoke, scratch: [sys.executable, '-c', 'import time; time.sleep(60)']  # noqa: E731
    record = gc.run_step('ops', 30, sleeper, False, str(tmp_path), time_left=11)
    assert record['status'] == 'failed' and record['rc'] == 'timeout' and record['seconds'] < 40
    assert gc.run_step('ops', 30, sleeper, False, str(tmp_path), time_left=5) == dict(status='skipped',
                                                                                     reason='out of time')


def test_selftest_parser_lists_the_mismatches(tmp_path):
    gc = _module()
    rows = [dict(op='bias_act', variant='tanh', dtype='float32', ok=False, max_error=5e-4, tolerance=2e-5,
                 kernel_ms=0.01, ref_ms=0.05),
            dict(op='upfirdn2d', variant='tiled 4x4', dtype='float16', ok=True, max_error=1e-4, tolerance=4e-3,
                 kernel_ms=0.02, ref_ms=0.2)]
    (tmp_path / 'selftest.json').write_text(json.dumps(dict(device='cuda0-NVIDIA_H100-sm90', rows=rows)))
    parsed = gc._parse_selftest('', str(tmp_path))
    assert parsed['variants'] == 2 and parsed['rows'] == rows
    assert parsed['mismatches'] == ['bias_act tanh float32: 0.0005 > 2e-05']
