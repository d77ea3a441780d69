"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2-D images, channel by channel.

Semantics of upfirdn2d(x, f, up, down, padding, flip_filter, gain), per channel and per axis
(as upstream):
  1. upsample: insert up-1 zeros after every sample;
  2. pad with zeros by [x0, x1, y0, y1] (negative values crop);
  3. convolve with f -- a true convolution, or a correlation when flip_filter=True -- keeping only the
     outputs whose filter footprint lies inside the padded signal ("valid"); the filter is scaled by
     gain**(f.ndim/2) so that the total gain is `gain` for 1-D (separable) and 2-D filters alike;
  4. keep every down-th sample.
  Output size per axis: (in*up + pad0 + pad1 - taps + down) // down.

Two implementations with identical semantics:
  - 'ref': plain PyTorch (reshape/pad for the zero insertion, depthwise conv2d for the FIR). Works on any
    device and dtype and supports gradients of any order, w.r.t. x and f.
  - 'cuda': torch_utils/ops/upfirdn2d.cu. x may have any strides (contiguous, channels_last, or a view);
    the kernel reads through the strides and writes a new tensor in x's suggested memory format. Gradients
    of any order w.r.t. x (the backward is itself an upfirdn2d); no gradient w.r.t. f.
impl='auto' picks 'cuda' for CUDA tensors when the plugin builds, else 'ref'.
"""

import functools
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import custom_ops, kernel_checks, op_trace

_PLUGIN_NAME = 'upfirdn2d_plugin'
_SRC_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCES = [os.path.join(_SRC_DIR, 'upfirdn2d.cpp'), os.path.join(_SRC_DIR, 'upfirdn2d.cu')]
_HEADERS = [os.path.join(_SRC_DIR, 'upfirdn2d.h'), os.path.join(_SRC_DIR, 'cuda_num.h'),
            os.path.join(_SRC_DIR, 'launch.h')]
# --use_fast_math: the kernel only multiplies and adds (no transcendental functions); fast math lets nvcc
# contract into FMAs and flushes float32 denormals to zero (values below 1.2e-38, far under any tolerance)
# -- the same choice as upstream.
_BUILD_KWARGS = dict(extra_cuda_cflags=['--use_fast_math'])
KERNEL_MAX_NUMEL = op_trace.INT_MAX  # elements per launch (input and output); larger calls are split


# ----------------------------------------------------------------------------------------------------------
# Argument parsing.

def _parse_scaling(scaling):
    """int or [x, y] -> (sx, sy), both >= 1."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = [int(s) for s in scaling]
    if len(scaling) != 2 or sx < 1 or sy < 1:
        raise ValueError(f'up/down must be an int or [x, y] of ints >= 1, got {scaling}')
    return sx, sy


def _parse_padding(padding):
    """int, [x, y] or [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f'padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}')
    return tuple(padding)


def _get_filter_size(f):
    """Filter width and height (fw, fh); None counts as a 1x1 identity filter."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError('the filter must be a 1-D or 2-D tensor (see setup_filter)')
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def _output_size(in_size, up, down, pad0, pad1, taps):
    """Per-axis output size of upfirdn2d."""
    return (in_size * up + pad0 + pad1 - taps + down) // down


# ----------------------------------------------------------------------------------------------------------
# Filters.

def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn filter taps into the float32 tensor that upfirdn2d expects.

    Args:
        f: Taps as a number, list, array or tensor of rank 0, 1 or 2; None means the 1-tap identity.
        device: Device of the result.
        normalize: Divide by the sum of the taps so the filter preserves DC.
        flip_filter: Flip the taps (turns the convolution into a correlation).
        gain: Overall gain; each 1-D pass gets gain**0.5, a 2-D filter gets the whole gain.
        separable: Keep a 1-D filter separable (applied as a horizontal then a vertical pass). The
            default keeps 1-D filters with 8 or more taps separable and expands shorter ones to f (x) f.

    Returns:
        float32 tensor of shape [taps] (separable) or [fh, fw].
    """
    if f is None:
        f = 1
    f = torch.as_tensor(np.asarray(f, dtype=np.float32) if not isinstance(f, torch.Tensor) else f,
                        dtype=torch.float32).clone()
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f'filter must be a non-empty scalar, 1-D or 2-D array, got shape {list(f.shape)}')
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError('separable=True needs a 1-D filter')
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ----------------------------------------------------------------------------------------------------------
# Implementation choice.

_load_plugin = custom_ops.plugin_loader(_PLUGIN_NAME, _SOURCES, _HEADERS, **_BUILD_KWARGS)


def which_impl(x, impl='auto'):
    """'ref' or 'cuda' for a call with this tensor and impl (rules: custom_ops.choose_impl)."""
    return custom_ops.choose_impl(x, impl, _load_plugin)


def cuda_available():
    """True when the CUDA plugin is built (or builds now); never raises."""
    return custom_ops.plugin_usable(_load_plugin)


# ----------------------------------------------------------------------------------------------------------
# Public op.

def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Upsample, pad, filter and downsample a batch of images (see the module docstring for the math).

    Args:
        x: [N, C, H, W] tensor, float16/float32/float64, any memory layout.
        f: float32 filter from setup_filter ([taps] separable, or [fh, fw]); None for identity.
        up: Upsampling factor, int or [x, y].
        down: Downsampling factor, int or [x, y].
        padding: int, [x, y] or [x0, x1, y0, y1]; negative values crop.
        flip_filter: False = true convolution, True = correlation.
        gain: Overall signal gain.
        impl: 'auto', 'ref' or 'cuda'.

    Returns:
        [N, C, out_h, out_w] tensor of x's dtype.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('x must be a 4-D tensor [N, C, H, W]')
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    out_w = _output_size(x.shape[3], upx, downx, px0, px1, fw)
    out_h = _output_size(x.shape[2], upy, downy, py0, py1, fh)
    if out_w < 1 or out_h < 1:
        raise ValueError(f'upfirdn2d output would be empty ({out_h}x{out_w}): too little padding for the filter')
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    args = ((upx, upy), (downx, downy), (px0, px1, py0, py1), bool(flip_filter), float(gain))
    if op_trace.active is not None:  # a meta-device audit: record the launches the CUDA path would make
        return op_trace.active.run_op(kernel_launches(x, f, *args), lambda: _upfirdn2d_ref(x, f, *args))
    if which_impl(x, impl) == 'cuda' and (impl == 'cuda' or
                                          kernel_checks.allowed('upfirdn2d', kernel_variant(x, f, *args[:2]),
                                                                x.dtype, x.device)):
        return _upfirdn2d_cuda(*args).apply(x, f)
    return _upfirdn2d_ref(x, f, *args)


def kernel_launches(x, f, up, down, padding, flip_filter=False, gain=1):
    """The launches the CUDA path makes for this forward call, as dicts (op, in_shape, out_shape, dtype).

    A separable filter runs as a row pass then a column pass. Each backward launch maps the output shape
    back to the input shape, so it has the same element counts as the forward one.
    """
    N, C, H, W = [int(s) for s in x.shape]
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = padding
    out_w = _output_size(W, up[0], down[0], px0, px1, fw)
    out_h = _output_size(H, up[1], down[1], py0, py1, fh)
    shapes = [[N, C, H, W], [N, C, out_h, out_w]]
    if f is not None and f.ndim == 1:
        shapes.insert(1, [N, C, H, out_w])
    return [dict(op='upfirdn2d', in_shape=a, out_shape=b, dtype=x.dtype) for a, b in zip(shapes[:-1], shapes[1:])]


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    """Pure-PyTorch upfirdn2d; arguments already parsed. Differentiable to any order."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    N, C, H, W = x.shape

    # 1. Zero insertion: append up-1 zeros after each sample along both axes.
    x = x.reshape(N, C, H, 1, W, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(N, C, H * upy, W * upx)

    # 2. Pad (positive) then crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # 3. FIR. conv2d correlates, so flip the taps to get a true convolution.
    # Scale in float64 for float64 inputs (so the reference is exact there), else in float32 like the
    # kernel; scaling a half filter would round the taps twice.
    f = f.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(C, 1, *f.shape).contiguous(), groups=C)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(C, 1, 1, f.numel()).contiguous(), groups=C)
        x = F.conv2d(x, f[None, None, :, None].expand(C, 1, f.numel(), 1).contiguous(), groups=C)

    # 4. Decimate.
    return x[:, :, ::downy, ::downx]


# ----------------------------------------------------------------------------------------------------------
# CUDA path.

def _grad_padding(in_w, in_h, out_w, out_h, fw, fh, up, down, padding):
    """Padding of the adjoint upfirdn2d (up and down swapped, flip inverted) that yields dx from dy.

    Derivation: y[o] = sum_t xpad[o*down + t] g[t] with xpad[i*up + p0] = x[i]. Then
    dx[i] = sum_k dyup[k] g[i*up + p0 - k]; matching that to a valid correlation of the zero-inserted dy
    with the reversed filter gives a left pad of fw - p0 - 1 and a right pad that restores length in_w.
    """
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    return (fw - px0 - 1, in_w * upx - out_w * downx + px0 - upx + 1,
            fh - py0 - 1, in_h * upy - out_h * downy + py0 - upy + 1)


_warned_fallback = set()  # reasons already warned about


def _split_calls(x, per_plane, call):
    """call(x), split along N (then C) so that no launch has more than KERNEL_MAX_NUMEL elements.

    Channels are filtered independently, so any split along N or C gives the same values.
    per_plane: the larger of a plane's input and output element counts.
    """
    N, C = int(x.shape[0]), int(x.shape[1])
    limit = KERNEL_MAX_NUMEL
    if N * C * per_plane <= limit:
        return call(x)
    if C * per_plane <= limit:  # whole images per launch
        step = limit // (C * per_plane)
        return torch.cat([call(x[i:i + step]) for i in range(0, N, step)], dim=0)
    step = limit // per_plane  # one image per launch is too much: groups of channels
    return torch.cat([torch.cat([call(x[i:i + 1, c:c + step]) for c in range(0, C, step)], dim=1)
                      for i in range(N)], dim=0)


def _plugin_pass(plugin, x, f2, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
    """One binding call per launch-sized piece of x."""
    out_w = _output_size(x.shape[3], upx, downx, px0, px1, f2.shape[1])
    out_h = _output_size(x.shape[2], upy, downy, py0, py1, f2.shape[0])
    per_plane = max(int(x.shape[2]) * int(x.shape[3]), out_h * out_w)
    return _split_calls(x, per_plane, lambda part: plugin.upfirdn2d(part, f2, upx, upy, downx, downy, px0, px1,
                                                                    py0, py1, flip_filter, gain))


def _plane_too_large(x, f, up, down, padding):
    """A one-line reason when even one channel of one image exceeds a launch, else None."""
    for launch in kernel_launches(x, f, up, down, padding):
        for shape in (launch['in_shape'], launch['out_shape']):
            if shape[2] * shape[3] > KERNEL_MAX_NUMEL:
                return f'upfirdn2d: a plane of {shape[2]}x{shape[3]} exceeds the kernel\'s 32-bit element count'
    return None


def _run_plugin(x, f, up, down, padding, flip_filter, gain):
    """One or two kernel launches (separable filters run as a horizontal then a vertical pass).

    Calls larger than a launch allows are split along N and C; a single plane too large for the kernel
    takes the reference (one warning per process).
    """
    reason = _plane_too_large(x, f, up, down, padding)
    if reason is not None:
        if reason not in _warned_fallback:
            _warned_fallback.add(reason)
            warnings.warn(f'{reason}; using the pure-PyTorch reference for such calls', RuntimeWarning, stacklevel=2)
        return _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)
    plugin = _load_plugin(required=True)
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    f = f.to(device=x.device, dtype=torch.float32).contiguous()
    if f.ndim == 2:
        return _plugin_pass(plugin, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)
    half_gain = gain ** 0.5
    x = _plugin_pass(plugin, x, f[None, :], upx, 1, downx, 1, px0, px1, 0, 0, flip_filter, half_gain)
    return _plugin_pass(plugin, x, f[:, None], 1, upy, 1, downy, 0, 0, py0, py1, flip_filter, half_gain)


@functools.lru_cache(maxsize=None)
def _upfirdn2d_cuda(up, down, padding, flip_filter, gain):
    """autograd.Function for one static configuration; its backward is another such Function."""
    upx, upy = up
    downx, downy = down

    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):
            if f.requires_grad:
                raise NotImplementedError('upfirdn2d CUDA path has no gradient w.r.t. the filter; use impl="ref"')
            y = _run_plugin(x, f, up, down, padding, flip_filter, gain)
            ctx.save_for_backward(f)
            ctx.in_hw = x.shape[2:]
            return y

        @staticmethod
        def backward(ctx, dy):
            f, = ctx.saved_tensors
            in_h, in_w = ctx.in_hw
            out_h, out_w = dy.shape[2:]
            fw, fh = _get_filter_size(f)
            grad_pad = _grad_padding(in_w, in_h, out_w, out_h, fw, fh, up, down, padding)
            dx = None
            if ctx.needs_input_grad[0]:
                dx = _upfirdn2d_cuda((downx, downy), (upx, upy), grad_pad, not flip_filter, gain).apply(dy, f)
            return dx, None

    return Upfirdn2dCuda


# ----------------------------------------------------------------------------------------------------------
# Kernel variants and their self-check (torch_utils/kernel_checks.py).

# name -> (taps, separable, up, down, padding, channels_last): one call of the variant, as the networks and
# ADA make it. The tiled cases are the ones launch_tiled() in upfirdn2d.cu specialises.
KERNEL_VARIANTS = {
    'tiled 4x4':          ([1, 3, 3, 1], False, 1, 1, [2, 1, 2, 1], False),
    'tiled 4x4 up2':      ([1, 3, 3, 1], False, 2, 1, [2, 1, 2, 1], False),
    'tiled 4x4 down2':    ([1, 3, 3, 1], False, 1, 2, [1, 1, 1, 1], False),
    'tiled 12-tap up2':   ([1, 2, 4, 6, 8, 9, 9, 8, 6, 4, 2, 1], True, 2, 1, [6, 5, 6, 5], False),
    'tiled 12-tap down2': ([1, 2, 4, 6, 8, 9, 9, 8, 6, 4, 2, 1], True, 1, 2, [5, 5, 5, 5], False),
    'generic':            ([1, 2, 1], False, 2, 1, [2, 0, 1, 1], False),
    'generic nhwc':       ([1, 3, 3, 1], False, 2, 1, [2, 1, 2, 1], True),
}


def kernel_variant(x, f, up, down):
    """The KERNEL_VARIANTS name of the launches a CUDA call with these arguments makes."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return 'generic nhwc'
    (upx, upy), (downx, downy) = up, down
    if upx != upy or downx != downy or (upx, downx) not in ((1, 1), (2, 1), (1, 2)):
        return 'generic'
    suffix = {(1, 1): '', (2, 1): ' up2', (1, 2): ' down2'}[(upx, downx)]
    if f.ndim == 2 and tuple(f.shape) == (4, 4):
        return 'tiled 4x4' + suffix
    if f.ndim == 1 and f.shape[0] == 12 and suffix:
        return 'tiled 12-tap' + suffix
    return 'generic'


def _check_variant(variant, dtype, device):
    """Kernel vs float64 reference on a small random call of `variant`: output and input gradient."""
    taps, separable, up, down, padding, channels_last = KERNEL_VARIANTS[variant]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 5, 19, 23], generator=gen).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    f = setup_filter(taps, device=device, separable=separable)
    args = ((up, up), (down, down), tuple(padding), False, float(up * up))
    assert kernel_variant(x, f, *args[:2]) == variant
    x.requires_grad_(True)
    _upfirdn2d_cuda(*args).apply(x, f)  # warm-up (first launch)
    y, kernel_ms = kernel_checks.timed(lambda: _upfirdn2d_cuda(*args).apply(x, f), device)
    _, ref_ms = kernel_checks.timed(lambda: _upfirdn2d_ref(x.detach(), f, *args), device)
    dy = torch.randn(y.shape, generator=gen).to(device=device, dtype=dtype)
    (dx,) = torch.autograd.grad(y, [x], dy)
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    y64 = _upfirdn2d_ref(x64, f, *args)
    (dx64,) = torch.autograd.grad(y64, [x64], dy.to(torch.float64))
    err = max(kernel_checks.max_error(y, y64), kernel_checks.max_error(dx, dx64))
    return dict(max_error=err, tolerance=kernel_checks.tolerance(dtype), kernel_ms=kernel_ms, ref_ms=ref_ms)


@functools.lru_cache(maxsize=None)
def _build_name():
    return custom_ops.build_name(_PLUGIN_NAME, _SOURCES + _HEADERS, _BUILD_KWARGS)


kernel_checks.register('upfirdn2d', _check_variant, _build_name)

# ----------------------------------------------------------------------------------------------------------
# Convenience wrappers (upstream's padding conventions).

def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Filter without changing the image size (extra padding is added around the user's).

    Args:
        x, f, flip_filter, gain, impl: As for upfirdn2d.
        padding: Extra padding relative to the output, int / [x, y] / [x0, x1, y0, y1].

    Returns:
        [N, C, H + pad_y, W + pad_x] tensor.
    """
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Upsample by `up` (zero insertion + FIR with gain up_x*up_y, which preserves DC).

    Args:
        x, f, flip_filter, gain, impl: As for upfirdn2d.
        up: int or [x, y].
        padding: Extra padding relative to the output.

    Returns:
        [N, C, H*up_y, W*up_x] tensor (plus padding).
    """
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='auto'):
    """Downsample by `down` (FIR, then keep every down-th sample).

    Args:
        x, f, flip_filter, gain, impl: As for upfirdn2d.
        down: int or [x, y].
        padding: Extra padding relative to the input.

    Returns:
        [N, C, H//down_y, W//down_x] tensor (for even sizes and no extra padding).
    """
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
