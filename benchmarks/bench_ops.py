"""Time the custom ops: pure-PyTorch reference vs CUDA kernel, on typical StyleGAN2 shapes.

    python benchmarks/bench_ops.py              # GPU: ref and cuda, forward and forward+backward, ratios
    python benchmarks/bench_ops.py --scale 4    # shrink every spatial size by 4 (CPU: ref timings only)

The ratio column is ref_time / cuda_time measured in the same run (> 1 means the kernel is faster).
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils.ops import bias_act, upfirdn2d  # noqa: E402

FIR4 = [1, 3, 3, 1]
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]  # ADA's 12-tap


def _cases(scale):
    """(name, build(device, dtype) -> (fn(impl, x), x)) for the shapes the networks use."""
    s = lambda n: max(n // scale, 4)  # noqa: E731

    def fir(fn, shape, taps, **kw):
        def build(device, dtype):
            f = upfirdn2d.setup_filter(taps, device=device)
            x = torch.randn(shape, device=device, dtype=dtype)
            return (lambda impl, x: fn(x, f, impl=impl, **kw)), x
        return build

    def act(shape, **kw):
        def build(device, dtype):
            x = torch.randn(shape, device=device, dtype=dtype)
            b = torch.randn([shape[1]], device=device, dtype=dtype)
            return (lambda impl, x: bias_act.bias_act(x, b, impl=impl, **kw)), x
        return build

    return [
        ('upsample2d  fir4  [16,256,64,64]',  fir(upfirdn2d.upsample2d, [16, 256, s(64), s(64)], FIR4)),
        ('downsample2d fir4 [16,256,64,64]',  fir(upfirdn2d.downsample2d, [16, 256, s(64), s(64)], FIR4)),
        ('upsample2d  fir4  img [16,3,256,256]', fir(upfirdn2d.upsample2d, [16, 3, s(256), s(256)], FIR4)),
        ('upfirdn2d sym6 up2 (ADA) [16,3,256,256]',
         fir(upfirdn2d.upfirdn2d, [16, 3, s(256), s(256)], SYM6, up=2, padding=[6, 5, 6, 5], gain=4)),
        ('upfirdn2d sym6 down2 (ADA) [16,3,512,512]',
         fir(upfirdn2d.upfirdn2d, [16, 3, s(512), s(512)], SYM6, down=2, padding=[5, 5, 5, 5])),
        ('bias_act lrelu clamp [16,512,32,32]', act([16, 512, s(32), s(32)], act='lrelu', clamp=256)),
        # At this size impl='auto' takes the PyTorch path (bias_act.SMALL_NUMEL): this row checks that choice.
        ('bias_act lrelu mapping [32,512]', act([32, 512], act='lrelu')),
        ('bias_act linear [16,512,64,64]', act([16, 512, s(64), s(64)], act='linear')),
        ('bias_act swish [16,256,64,64]', act([16, 256, s(64), s(64)], act='swish')),
    ]


def _time(fn, device, iters, backward):
    """Median seconds per call (after warm-up), synchronising the device around each call."""
    def once():
        if backward:
            fn().float().square().sum().backward()
        else:
            fn()
    for _ in range(3):
        once()
    times = []
    for _ in range(iters):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@click.command()
@click.option('--iters', type=click.IntRange(min=1), default=20, show_default=True, help='Timed calls per case.')
@click.option('--scale', type=click.IntRange(min=1), default=None, help='Divide spatial sizes [default: 1 on GPU, 8 on CPU].')
@click.option('--dtype', type=click.Choice(['float16', 'float32']), default=None, help='[default: float16 on GPU, float32 on CPU].')
def main(iters, scale, dtype):
    """Print ref vs cuda timings and their ratio for each op and shape."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    scale = scale or (1 if device.type == 'cuda' else 8)
    dtype = getattr(torch, dtype or ('float16' if device.type == 'cuda' else 'float32'))
    impls = ['ref', 'cuda'] if device.type == 'cuda' else ['ref']
    print(f'device={device} dtype={dtype} scale=1/{scale} iters={iters}')
    print(f'{"case":42s} {"pass":8s} ' + ' '.join(f'{i + " ms":>10s}' for i in impls) + ('   ratio' if len(impls) > 1 else ''))
    for name, build in _cases(scale):
        fn, x = build(device, dtype)
        for backward in (False, True):
            ms = []
            for impl in impls:
                xi = x.detach().requires_grad_(backward)
                ms.append(_time(lambda: fn(impl, xi), device, iters, backward) * 1e3)
            ratio = f' {ms[0] / ms[1]:7.2f}x' if len(ms) > 1 else ''
            print(f'{name:42s} {"fwd+bwd" if backward else "fwd":8s} ' + ' '.join(f'{t:10.3f}' for t in ms) + ratio)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
