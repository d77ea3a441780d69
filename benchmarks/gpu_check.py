"""One-command GPU check: test counts, training speed, metric time and kernel timings as one JSON file.

On a machine with one GPU this runs in under 8 minutes (every step has a time cap and the steps
share an overall budget; a step that does not fit is recorded as skipped, never half-measured):
  gpu_tests           the gpu-marked tests (kernels vs reference ops, grid_sample, augment syncs):
                      pass/fail/skip/error counts; this step also builds the CUDA plugins once;
  selftest            python -m torch_utils.ops.selftest: every compiled kernel variant (fp16, fp32) against
                      the float64 reference, its max error, tolerance and time vs the reference;
  train_b32_bg32      benchmarks/bench_training.py --cfg paper512 --res 512 --batch 32 --batch-gpu 32:
                      s/kimg and peak memory after warm-up (mixed precision, and its fp32 baseline);
  train_b64_bg8       the same with --batch 64 --batch-gpu 8;
  ops                 benchmarks/bench_ops.py: reference vs CUDA kernel ms and ratio per op and shape;
  fid                 benchmarks/bench_metrics.py at 512 with --num-gen 5000 fakes and 1000 reals; the
                      50k-image time is estimated as total_s * 50000 / 5000 (an upper bound: it also
                      counts the reals, the set-up and the detector load); also the generated-feature
                      loop's img/s against an upstream-style loop (4 images per G call, a host copy per
                      batch) over 512 images, and their ratio;
  augment             benchmarks/bench_augment.py: the augment pipe's forward and forward + R1 at 256 and
                      512 px (batch 4, bgc, p = 0.5), time and peak memory, batch-fitted padding vs one
                      full reflection, and the host reads per call (runs in the time the others leave).
--cpu-smoke runs the same steps at tiny sizes on the CPU (a few minutes), so the script cannot rot.

    bash benchmarks/gpu_check.sh [--out gpu_check.json] [--cpu-smoke]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere
from dnnlib import util  # noqa: E402
BUDGET_S = 470           # all steps together, on a GPU (the 8-minute promise, with margin)
SMOKE_CAP_S = 600        # per step with --cpu-smoke: only a hang guard (shared CPUs can be slow)
FID_FULL, FID_GPU_NUM_GEN = 50000, 5000

# ---------------------------------------------------------------------------------------------
# Steps: (name, cap in seconds, argv builder taking (smoke, scratch dir)).


def _py(script, *args):
    return [sys.executable, os.path.join(ROOT, 'benchmarks', script), *args]


def _gpu_tests(smoke, scratch):
    files = ['tests/test_ops_upfirdn2d.py', 'tests/test_ops_bias_act.py'] if smoke else ['tests']
    return [sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider',
            f'--junitxml={os.path.join(scratch, "gpu_tests.xml")}', *files]


def _selftest(_smoke, scratch):
    return [sys.executable, '-m', 'torch_utils.ops.selftest', '--json', os.path.join(scratch, 'selftest.json')]


def _train(batch, batch_gpu):
    def argv(smoke, _scratch):
        if smoke:
            return _py('bench_training.py', '--device', 'cpu', '--res', '32', '--batch', '8',
                       '--batch-gpu', str(8 * batch_gpu // batch), '--kimg', '0.016', '--warmup', '1')
        return _py('bench_training.py', '--device', 'cuda', '--res', '512', '--cfg', 'paper512', '--batch', str(batch),
                   '--batch-gpu', str(batch_gpu), '--kimg', '0.512', '--warmup', '3')
    return argv


def _ops(smoke, _scratch):
    return _py('bench_ops.py', '--scale', '8', '--iters', '1') if smoke else _py('bench_ops.py', '--iters', '10')


def _fid(smoke, _scratch):
    if smoke:
        return _py('bench_metrics.py', '--device', 'cpu', '--resolution', '32', '--num-gen', '8', '--num-real', '8',
                   '--cbase', '512', '--batch', '8', '--repeats', '1')
    return _py('bench_metrics.py', '--device', 'cuda', '--resolution', '512', '--cbase', '32768', '--num-gen',
               str(FID_GPU_NUM_GEN), '--num-real', '1000', '--batch', '64', '--repeats', '1')


def _augment(smoke, _scratch):
    if smoke:
        return _py('bench_augment.py', '--device', 'cpu', '--res', '32', '--repeats', '1')
    return _py('bench_augment.py', '--device', 'cuda', '--repeats', '5')


# The caps up to fid add up to BUDGET_S and augment gets what they leave; gpu_tests includes building both
# CUDA plugins.
STEPS = [
    ('gpu_tests', 180, _gpu_tests),
    ('selftest', 20, _selftest),
    ('train_b32_bg32', 80, _train(32, 32)),
    ('train_b64_bg8', 80, _train(64, 8)),
    ('ops', 30, _ops),
    ('fid', 80, _fid),
    ('augment', 30, _augment),
]

# ---------------------------------------------------------------------------------------------
# Parsers: a step's output -> its numbers.


def _parse_gpu_tests(_out, scratch):
    root = ET.parse(os.path.join(scratch, 'gpu_tests.xml')).getroot()
    suite = root if root.tag == 'testsuite' else root.find('testsuite')
    counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    failed = [f'{case.get("classname")}::{case.get("name")}' for case in suite.iter('testcase')
              if case.find('failure') is not None or case.find('error') is not None]
    return dict(counts, failed=failed)


def _parse_selftest(_out, scratch):
    with open(os.path.join(scratch, 'selftest.json'), encoding='utf-8') as f:
        table = json.load(f)
    rows = table['rows']
    mismatches = [f'{r["op"]} {r["variant"]} {r["dtype"]}: {r["max_error"]:.3g} > {r["tolerance"]:.1g}'
                  for r in rows if not r['ok']]
    return dict(device=table['device'], variants=len(rows), mismatches=mismatches, rows=rows)


_NUM = r'([0-9.]+|nan|inf)'


def _parse_train(out, _scratch):
    runs = []
    for m in re.finditer(rf'^(\S.*?)\s+{_NUM} sec/kimg\s+peak GPU mem\s+(?:{_NUM} GiB|n/a.*)$', out, re.M):
        peak = m.group(3)
        runs.append(dict(label=m.group(1).strip(), sec_per_kimg=float(m.group(2)),
                         peak_gib=float(peak) if peak is not None else None))
    if not runs:
        raise ValueError('no "sec/kimg" lines in the output')
    return dict(runs=runs)


def _parse_ops(out, _scratch):
    rows = []
    for m in re.finditer(r'^(\S.*?)\s+(fwd\+bwd|fwd)\s+([0-9. ]+?)(?:\s+([0-9.]+)x)?\s*$', out, re.M):
        ms = [float(v) for v in m.group(3).split()]
        rows.append(dict(case=m.group(1).strip(), pass_=m.group(2), ref_ms=ms[0],
                         cuda_ms=ms[1] if len(ms) > 1 else None,
                         ratio=float(m.group(4)) if m.group(4) else None))
    if not rows:
        raise ValueError('no timing rows in the output')
    return dict(rows=rows)


def _parse_fid(out, _scratch):
    m = re.search(r'^(\S+)\s+([0-9.]+) s total \((\d+) reals \+ (\d+) fakes\): (\{.*\})$', out, re.M)
    if not m:
        raise ValueError('no "s total" line in the output')
    total, num_gen = float(m.group(2)), int(m.group(4))
    gen = re.search(r'^generation\s+([0-9.]+) img/s.*ratio\s+([0-9.]+)x', out, re.M)
    feats = re.search(r'^features\s+([0-9.]+) img/s', out, re.M)
    loop = re.search(r'^feature loop\s+([0-9.]+) img/s.*baseline\s+([0-9.]+) img/s.*ratio\s+([0-9.]+)x', out, re.M)
    return dict(metric=m.group(1), total_s=total, num_real=int(m.group(3)), num_gen=num_gen,
                results=m.group(5), fid50k_full_estimate_s=total * FID_FULL / num_gen,
                generation_img_s=float(gen.group(1)) if gen else None,
                generation_ratio_vs_batch4=float(gen.group(2)) if gen else None,
                detector_img_s=float(feats.group(1)) if feats else None,
                feature_loop_img_s=float(loop.group(1)) if loop else None,
                feature_loop_baseline_img_s=float(loop.group(2)) if loop else None,
                feature_loop_ratio=float(loop.group(3)) if loop else None)


def _parse_augment(out, _scratch):
    rows = []
    for m in re.finditer(rf'^augment\s+(\d+) (\S+)\s+(time|memory)\s+fitted\s+{_NUM} (?:s|MiB)\s+full\s+{_NUM} '
                         rf'(?:s|MiB)\s+ratio {_NUM}x$', out, re.M):
        unit = 's' if m.group(3) == 'time' else 'mib'
        rows.append({'res': int(m.group(1)), 'mode': m.group(2), f'fitted_{m.group(3)}_{unit}': float(m.group(4)),
                     f'full_{m.group(3)}_{unit}': float(m.group(5)), 'ratio': float(m.group(6))})
    reads = dict(re.findall(r'^host reads per call\s+(\S+)\s+(\d+)', out, re.M))
    if not rows or not reads:
        raise ValueError('no augment rows or host-read lines in the output')
    return dict(rows=rows, host_reads_per_call={k: int(v) for k, v in reads.items()})


PARSERS = dict(gpu_tests=_parse_gpu_tests, selftest=_parse_selftest, train_b32_bg32=_parse_train,
               train_b64_bg8=_parse_train, ops=_parse_ops, fid=_parse_fid, augment=_parse_augment)

# ---------------------------------------------------------------------------------------------


def run_step(name, cap, build, smoke, scratch, time_left):
    """Run one step under min(cap, time_left) seconds; returns its JSON record."""
    limit = SMOKE_CAP_S if smoke else min(cap, time_left)
    if limit < 10:
        return dict(status='skipped', reason='out of time')
    argv = build(smoke, scratch)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    if smoke:
        env['CUDA_VISIBLE_DEVICES'] = ''
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 'timeout', _text(e.stdout) + _text(e.stderr)
    record = dict(command=' '.join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in argv),
                  rc=rc, seconds=round(time.perf_counter() - start, 1))
    # pytest exits 1 when a test fails: the counts are still the result.
    if rc == 0 or (name == 'gpu_tests' and rc == 1):
        try:
            record.update(PARSERS[name](out, scratch))
            record['status'] = 'ok' if rc == 0 else 'tests failed'
            return record
        except (ValueError, OSError, ET.ParseError) as e:
            record['parse_error'] = str(e)
    record['status'] = 'failed'
    record['output_tail'] = out[-3000:]
    return record


def _text(data):
    return data.decode(errors='replace') if isinstance(data, bytes) else (data or '')


def _environment(smoke):
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not smoke else None
    return dict(mode='cpu-smoke' if smoke else 'gpu', torch=torch.__version__, cuda=torch.version.cuda, gpu=gpu,
                python=sys.version.split()[0])


def write_json_atomic(path, data):
    """Write `data` as JSON atomically, with normal 0644-style permissions."""
    util.atomic_write_text(path, json.dumps(data, indent=2) + '\n')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='gpu_check.json', help='JSON file to write [gpu_check.json]')
    parser.add_argument('--cpu-smoke', action='store_true', help='tiny sizes on the CPU (checks the script itself)')
    a = parser.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(a.out))
    if not os.path.isdir(out_dir):
        parser.exit(2, f'gpu_check: --out {a.out}: folder {out_dir} does not exist\n')
    import torch
    if not a.cpu_smoke and not torch.cuda.is_available():
        parser.exit(2, 'gpu_check: no CUDA device found (use --cpu-smoke to check the script on a CPU)\n')
    start = time.perf_counter()
    report = dict(environment=_environment(a.cpu_smoke), steps=dict())
    with tempfile.TemporaryDirectory() as scratch:
        for name, cap, build in STEPS:
            left = BUDGET_S - (time.perf_counter() - start)
            report['steps'][name] = record = run_step(name, cap, build, a.cpu_smoke, scratch, left)
            print(f'gpu_check: {name:16s} {record["status"]:12s} {record.get("seconds", 0):7.1f} s', flush=True)
    report['wall_s'] = round(time.perf_counter() - start, 1)
    write_json_atomic(a.out, report)
    print(f'gpu_check: wrote {a.out} ({report["wall_s"]} s)')
    return 0 if all(r['status'] == 'ok' for r in report['steps'].values()) else 1


if __name__ == '__main__':
    sys.exit(main())
