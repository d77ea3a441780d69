"""Training speed: seconds per kimg and peak memory, for a configuration and a baseline in one run.

The candidate and the baseline train the same data on the same device in the same process, so the
printed ratio is meaningful even on a noisy shared machine. Defaults:
- CUDA: the given --cfg at --res, mixed precision (candidate) vs --fp32 (baseline).
- CPU:  a small 32x32 network, batch_gpu = batch (candidate) vs batch_gpu = batch / 2 (baseline,
  two accumulation rounds); about a minute in total.

Usage:
    python benchmarks/bench_training.py                        # CPU: ~1 minute at 32x32
    python benchmarks/bench_training.py --kimg 0.016 --warmup 1 --cbase 256 --cmax 16   # CPU smoke: seconds
    python benchmarks/bench_training.py --res 256 --cfg paper256 --batch 64 --kimg 2   # GPU
    python benchmarks/bench_training.py --res 512 --cfg paper512 --batch 64 --batch-gpu 8 --kimg 1
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import options as opt_lib  # noqa: E402
from training import training_loop  # noqa: E402


def write_dataset(path, res, num_images=64):
    """Random low-frequency RGB images in dataset_tool's zip layout."""
    rnd = np.random.RandomState(0)
    with zipfile.ZipFile(path, 'w') as zf:
        for i in range(num_images):
            small = rnd.randint(0, 256, size=[4, 4, 3]).astype(np.uint8)
            img = PIL.Image.fromarray(small, 'RGB').resize((res, res), PIL.Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format='PNG')
            zf.writestr(f'00000/img{i:08d}.png', buf.getvalue())
    return path


def loop_kwargs(a, data, device_type, fp32, batch_gpu, run_dir):
    """training_loop kwargs from the CLI translation (so the benchmark measures what train.py runs)."""
    info = opt_lib.inspect_dataset(data)
    opts = dict(data=data, cfg=a.cfg, batch=a.batch, batch_gpu=batch_gpu, fp32=fp32, metrics='none', aug=a.aug,
                workers=0 if device_type == 'cpu' else 3, kimg=1)
    _, args = opt_lib.build_training_options(opts, dataset_info=info)
    if device_type == 'cpu':
        # A small network: the CPU benchmark measures the loop, not a 16k-channel-base convolution.
        for kw in (args.G_kwargs.synthesis_kwargs, args.D_kwargs):
            kw.channel_base, kw.channel_max = a.cbase, a.cmax
        args.G_kwargs.z_dim = args.G_kwargs.w_dim = 64
    args.update(run_dir=run_dir, device=device_type, print_summary=False, image_snapshot_ticks=None,
                network_snapshot_ticks=None, total_kimg=a.kimg, kimg_per_tick=a.kimg)
    return args


def measure(args, device_type, warmup_iters):
    """(sec/kimg from the end of the warm-up to the last iteration, peak GPU GiB) of one training run.

    Only iterations are timed: set-up, the start-up grids and the final snapshot/checkpoint are not.
    """
    marks = []
    total_nimg = int(args['total_kimg'] * 1000)

    def on_iteration(model, counters, step):
        if counters.batch_idx == warmup_iters or counters.cur_nimg >= total_nimg:
            if device_type == 'cuda':
                torch.cuda.synchronize()
                if counters.batch_idx == warmup_iters:
                    torch.cuda.reset_peak_memory_stats()
            marks.append((time.perf_counter(), counters.cur_nimg))

    args = dict(args, iteration_fn=on_iteration)
    with open(os.devnull, 'w') as devnull, contextlib.redirect_stdout(devnull):  # keep only the results
        training_loop.training_loop(**args)
    (t0, nimg0), (t1, nimg1) = marks[0], marks[-1]
    sec_per_kimg = (t1 - t0) / max(nimg1 - nimg0, 1) * 1000
    peak = torch.cuda.max_memory_allocated() / 2**30 if device_type == 'cuda' else float('nan')
    return sec_per_kimg, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--res', type=int, default=None, help='resolution [32 on CPU, 256 on GPU]')
    parser.add_argument('--cfg', default=None, help='train.py --cfg [auto on CPU, paper256 on GPU]')
    parser.add_argument('--batch', type=int, default=None, help='total batch [8 on CPU, 64 on GPU]')
    parser.add_argument('--batch-gpu', type=int, default=None,
                        help='images per forward pass on the GPU [train.py rule: batch // gpus]')
    parser.add_argument('--kimg', type=float, default=None, help='kimg per measured run [0.4 on CPU, 2 on GPU]')
    parser.add_argument('--aug', default='ada', choices=['ada', 'noaug'])
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations at the start of each run')
    parser.add_argument('--cbase', type=int, default=1024, help='CPU only: channel base of the small network')
    parser.add_argument('--cmax', type=int, default=64, help='CPU only: most channels of the small network')
    a = parser.parse_args()
    device_type = 'cuda' if a.device == 'auto' and torch.cuda.is_available() else ('cpu' if a.device == 'auto' else a.device)
    gpu = device_type == 'cuda'
    a.res = a.res or (256 if gpu else 32)
    a.cfg = a.cfg or ('paper256' if gpu else 'auto')
    a.batch = a.batch or (64 if gpu else 8)
    a.kimg = a.kimg or (2.0 if gpu else 0.4)

    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(os.path.join(tmp, 'bench.zip'), a.res)
        if gpu:
            cases = [('fp16 mixed precision', dict(fp32=False, batch_gpu=a.batch_gpu)),
                     ('fp32 (baseline)', dict(fp32=True, batch_gpu=a.batch_gpu))]
        else:
            cases = [(f'batch_gpu={a.batch}', dict(fp32=True, batch_gpu=a.batch)),
                     (f'batch_gpu={a.batch // 2} (baseline)', dict(fp32=True, batch_gpu=a.batch // 2))]
        results = []
        for label, case in cases:
            args = loop_kwargs(a, data, device_type, run_dir=os.path.join(tmp, f'run{len(results)}'), **case)
            sec, peak = measure(args, device_type, a.warmup)
            results.append((label, sec, peak))
            mem = f'peak GPU mem {peak:6.2f} GiB' if gpu else 'peak GPU mem n/a (CPU)'
            print(f'{label:<28s} {sec:8.2f} sec/kimg   {mem}', flush=True)
    (l0, s0, _), (l1, s1, _) = results
    print(f'\ndevice {device_type}, {a.res}x{a.res}, cfg {a.cfg}, batch {a.batch}: '
          f'{l0} is {s1 / s0:.2f}x the speed of {l1}')


if __name__ == '__main__':
    main()
