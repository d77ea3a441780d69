"""Cost of the augment pipe: the geometric step's batch-fitted padding vs one full reflection.

    python benchmarks/bench_augment.py                      # CPU: 256 and 512 px, batch 4, bgc, p = 0.5
    python benchmarks/bench_augment.py --device cuda        # the same on a GPU

Both variants run on the same inputs with the same draws (the RNG is re-seeded before every call):
`fitted` is the pipe as shipped (padding fitted to the batch, one host read per call), `full` pads
one full reflection per side whatever the draws (no host read). Rows: the forward pass, and forward +
R1 (a create_graph backward, then the backward of the gradient penalty through the pipe again).

Time: CPU thread time of one thread (torch runs single-threaded here, so the thread does all the
work), variants interleaved, median over --repeats; on CUDA, synchronised wall time. Peak memory: on
the CPU, the peak resident memory a single call adds, in a fresh subprocess per variant and row with glibc's
mmap threshold fixed so that freed tensors leave the resident set; on CUDA, max_memory_allocated
above what was allocated before the call. Ratios are fitted / full (< 1: the shipped pipe is cheaper).
"""

import os
import re
import statistics
import subprocess
import sys
import time

import click
import torch
from torch.overrides import TorchFunctionMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training import augment  # noqa: E402

MODES = ('fwd', 'fwd+r1')
_HOST_READS = {'item', 'tolist', 'numpy', 'cpu', '__float__', '__int__', '__bool__', '__index__'}


class FullPaddingPipe(augment.AugmentPipe):
    """The baseline: reflect-pads one full image size on every side, whatever the draws."""

    @staticmethod
    def _geometry_padding(core, W, H, border):
        return augment._full_padding(W, H)


VARIANTS = {'fitted': augment.AugmentPipe, 'full': FullPaddingPipe}


def _pipe(variant, preset, p, device):
    pipe = VARIANTS[variant](**augment.augpipe_specs[preset])
    pipe.p.fill_(p)
    return pipe.to(device)


def _images(batch, res, device):
    gen = torch.Generator().manual_seed(123)
    return (torch.rand([batch, 3, res, res], generator=gen) * 2 - 1).to(device)


def _call(pipe, x, mode, seed):
    """One forward (mode 'fwd') or forward + R1 double backward ('fwd+r1'), draws seeded by `seed`."""
    torch.manual_seed(seed)
    if mode == 'fwd':
        pipe(x)
        return
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(pipe(x).square().sum(), [x], create_graph=True)
    grad.square().sum().backward()


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(pipe, x, mode, seed):
    """Seconds one call takes: thread time on the CPU, synchronised wall time on CUDA."""
    clock = time.perf_counter if x.device.type == 'cuda' else time.thread_time
    _sync(x.device)
    start = clock()
    _call(pipe, x, mode, seed)
    _sync(x.device)
    return clock() - start


class _HostReads(TorchFunctionMode):
    """Counts calls that read a tensor's value back to the host (.tolist(), .item(), float(), ...)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, '__name__', '') in _HOST_READS:
            self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def host_reads(variant, preset, p, device, res):
    """Host reads of one steady-state forward call."""
    pipe, x = _pipe(variant, preset, p, device), _images(2, res, device)
    _call(pipe, x, 'fwd', 0)
    with _HostReads() as reads:
        _call(pipe, x, 'fwd', 1)
    return reads.names


# ---------------------------------------------------------------------------------------------
# Peak memory of one call.


def _kib(field):
    return int(re.search(rf'^{field}:\s+(\d+) kB', open('/proc/self/status').read(), re.M).group(1))


def peak_memory_mib(variant, mode, preset, p, device, batch, res, seeds):
    """[MiB] a single call adds at its peak, one per seed (CUDA: allocated tensors; CPU: resident memory)."""
    pipe, x = _pipe(variant, preset, p, device), _images(batch, res, device)
    # Warm-up on a small batch: one-time allocations (thread pools, kernels) stay out of the peaks.
    _call(pipe, _images(1, 16, device), mode, 0)
    peaks = []
    for seed in seeds:
        if device.type == 'cuda':
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            _call(pipe, x, mode, seed)
            _sync(device)
            peaks.append((torch.cuda.max_memory_allocated(device) - before) / 2**20)
            continue
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets the resident-set high-water mark (VmHWM)
        before = _kib('VmRSS')
        _call(pipe, x, mode, seed)
        peaks.append((_kib('VmHWM') - before) / 1024)
    return peaks


def _memory_in_subprocess(variant, mode, preset, p, batch, res, seeds):
    """peak_memory_mib on the CPU in a fresh process whose freed tensors leave the resident set."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', MALLOC_TRIM_THRESHOLD_='0', OMP_NUM_THREADS='1')
    argv = [sys.executable, os.path.abspath(__file__), '--memory-child', f'{variant},{mode}', '--preset', preset,
            '--p', str(p), '--batch', str(batch), '--res', str(res), '--device', 'cpu', '--repeats', str(len(seeds))]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return [float(v) for v in re.search(r'^peak_mib ([0-9. ]+)$', out, re.M).group(1).split()]


def _seeds(repeats):
    """The draws of the timed and measured calls: the same for both variants."""
    return [1000 + r for r in range(repeats)]


# ---------------------------------------------------------------------------------------------


@click.command(help=__doc__)
@click.option('--device', default='cpu', show_default=True, help='cpu or cuda')
@click.option('--res', 'resolutions', type=int, multiple=True, default=[256, 512], show_default=True,
              help='image size (repeatable)')
@click.option('--batch', type=int, default=4, show_default=True)
@click.option('--preset', default='bgc', show_default=True, type=click.Choice(sorted(augment.augpipe_specs)))
@click.option('--p', type=float, default=0.5, show_default=True, help='augmentation probability')
@click.option('--repeats', type=int, default=3, show_default=True, help='timed calls per variant and mode')
@click.option('--memory-child', default=None, hidden=True)
def main(device, resolutions, batch, preset, p, repeats, memory_child):
    device = torch.device(device)
    torch.set_num_threads(1)  # thread time sees only the calling thread's work
    if memory_child is not None:
        variant, mode = memory_child.split(',')
        peaks = peak_memory_mib(variant, mode, preset, p, device, batch, resolutions[0], _seeds(repeats))
        print('peak_mib ' + ' '.join(f'{v:.1f}' for v in peaks))
        return
    print(f'augment pipe {preset}, p = {p}, batch {batch}, device {device}, torch {torch.__version__}; '
          f'ratio = fitted / full')
    for variant in VARIANTS:
        reads = host_reads(variant, preset, p, device, min(resolutions))
        print(f'host reads per call  {variant:6s} {len(reads)} {reads}')
    for res in resolutions:
        x = _images(batch, res, device)
        pipes = {v: _pipe(v, preset, p, device) for v in VARIANTS}
        for pipe in pipes.values():
            _call(pipe, x, 'fwd+r1', 0)  # warm-up
        times = {(v, m): [] for v in VARIANTS for m in MODES}
        for r, seed in enumerate(_seeds(repeats)):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for mode in MODES:
                for v in order:
                    times[v, mode].append(_timed(pipes[v], x, mode, seed))
        del pipes
        for mode in MODES:
            a, b = (statistics.median(times[v, mode]) for v in VARIANTS)
            print(f'augment {res:4d} {mode:7s} time    fitted {a:9.4f} s    full {b:9.4f} s    ratio {a / b:.3f}x')
        for mode in MODES:
            if device.type == 'cuda':
                peaks = [peak_memory_mib(v, mode, preset, p, device, batch, res, _seeds(repeats)) for v in VARIANTS]
            else:
                peaks = [_memory_in_subprocess(v, mode, preset, p, batch, res, _seeds(repeats)) for v in VARIANTS]
            a, b = (statistics.median(v) for v in peaks)
            print(f'augment {res:4d} {mode:7s} memory  fitted {a:9.1f} MiB  full {b:9.1f} MiB  ratio {a / b:.3f}x')


if __name__ == '__main__':
    main()
