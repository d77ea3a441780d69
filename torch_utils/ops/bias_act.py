"""bias_act: fused bias + activation + gain + clamp.

    y = clamp(act(x + b, alpha) * gain, -clamp, +clamp)

with b broadcast along `dim` (upstream's order: activation, then gain, then clamp).
alpha and gain default to the activation's def_alpha and def_gain; clamp=None disables clamping.

Two implementations:
  - 'ref': plain PyTorch, any device/dtype, gradients of any order.
  - 'cuda': torch_utils/ops/bias_act.cu, an elementwise kernel (float32 math for float16 inputs).
    x must be non-overlapping and dense (contiguous, channels_last, or any permutation of those); other
    views are made contiguous first. First and second derivatives are supported, not third.
    One documented difference: the CUDA backward zeroes the gradient where the forward output was not
    strictly inside (-clamp, +clamp), while torch.clamp (the reference) passes it on the closed interval;
    the two agree everywhere except at outputs exactly equal to +-clamp. The kernel is handed the clamp
    rounded to x's dtype (181.02 is 181.0 in float16): a clamped float16 output holds that rounded value,
    and comparing it with the unrounded clamp would let gradients through saturated outputs. (Upstream
    compares with the unrounded value.) Calls of more than KERNEL_MAX_NUMEL elements are split into
    launches that fit the kernel's 32-bit indices.
impl='auto' takes the kernel for CUDA tensors of more than SMALL_NUMEL elements; smaller ones (e.g. the
mapping network's [batch, 512] activations) take the reference, whose few native kernels cost less than the
custom autograd.Function's Python overhead there.
"""

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F

from dnnlib.util import EasyDict
from torch_utils import custom_ops, kernel_checks, op_trace

_PLUGIN_NAME = 'bias_act_plugin'
_SRC_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCES = [os.path.join(_SRC_DIR, 'bias_act.cpp'), os.path.join(_SRC_DIR, 'bias_act.cu')]
_HEADERS = [os.path.join(_SRC_DIR, 'bias_act.h'), os.path.join(_SRC_DIR, 'cuda_num.h'),
            os.path.join(_SRC_DIR, 'launch.h')]
# No --use_fast_math (upstream builds with it): it turns tanhf into the hardware tanh.approx.f32, whose
# relative error (~2^-11) fails float32 comparisons with torch.tanh, and makes exp/log approximate too.
# The kernel is memory-bound, so the accurate functions cost nothing measurable.
_BUILD_KWARGS = dict(extra_cuda_cflags=[])
KERNEL_MAX_NUMEL = op_trace.INT_MAX  # elements per launch; larger calls are split

SMALL_NUMEL = 1 << 14  # impl='auto' uses the PyTorch path up to this many elements

_SELU_SCALE = 1.0507009873554805   # lambda of SELU (Klambauer et al. 2017)
_SELU_ALPHA = 1.6732632423543772


def _swish(x, **_):
    return x * torch.sigmoid(x)


# func: the reference formula. cuda_idx: the kernel's switch value. ref: which saved tensor the kernel's
# derivative needs ('x' = pre-activation input, 'y' = output, '' = neither). has_2nd_grad: whether the
# second derivative is non-zero (decides whether backward-of-backward must do any work).
activation_funcs = {
    'linear':   EasyDict(func=lambda x, **_: x,                               def_alpha=0,   def_gain=1,          cuda_idx=1, ref='',  has_2nd_grad=False),
    'relu':     EasyDict(func=lambda x, **_: F.relu(x),                       def_alpha=0,   def_gain=np.sqrt(2), cuda_idx=2, ref='y', has_2nd_grad=False),
    'lrelu':    EasyDict(func=lambda x, alpha, **_: F.leaky_relu(x, alpha),   def_alpha=0.2, def_gain=np.sqrt(2), cuda_idx=3, ref='y', has_2nd_grad=False),
    'tanh':     EasyDict(func=lambda x, **_: torch.tanh(x),                   def_alpha=0,   def_gain=1,          cuda_idx=4, ref='y', has_2nd_grad=True),
    'sigmoid':  EasyDict(func=lambda x, **_: torch.sigmoid(x),                def_alpha=0,   def_gain=1,          cuda_idx=5, ref='y', has_2nd_grad=True),
    'elu':      EasyDict(func=lambda x, **_: F.elu(x),                        def_alpha=0,   def_gain=1,          cuda_idx=6, ref='y', has_2nd_grad=True),
    'selu':     EasyDict(func=lambda x, **_: F.selu(x),                       def_alpha=0,   def_gain=1,          cuda_idx=7, ref='y', has_2nd_grad=True),
    'softplus': EasyDict(func=lambda x, **_: F.softplus(x),                   def_alpha=0,   def_gain=1,          cuda_idx=8, ref='y', has_2nd_grad=True),
    'swish':    EasyDict(func=_swish,                                         def_alpha=0,   def_gain=np.sqrt(2), cuda_idx=9, ref='x', has_2nd_grad=True),
}


# ----------------------------------------------------------------------------------------------------------
# Implementation choice.

_load_plugin = custom_ops.plugin_loader(_PLUGIN_NAME, _SOURCES, _HEADERS, **_BUILD_KWARGS)


def which_impl(x, impl='auto'):
    """'ref' or 'cuda' for a call with this tensor and impl (custom_ops.choose_impl, then the size rule)."""
    choice = custom_ops.choose_impl(x, impl, _load_plugin)
    if choice == 'cuda' and impl == 'auto' and x.numel() <= SMALL_NUMEL:
        return 'ref'
    return choice


def cuda_available():
    """True when the CUDA plugin is built (or builds now); never raises."""
    return custom_ops.plugin_usable(_load_plugin)


# ----------------------------------------------------------------------------------------------------------
# Public op.

def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='auto'):
    """Add a bias along one dimension, apply an activation, scale, and clamp.

    Args:
        x: Input tensor of any shape, float16/float32/float64.
        b: Bias of shape [x.shape[dim]] and x's dtype, or None.
        dim: The dimension of x that b runs along.
        act: A key of activation_funcs.
        alpha: Activation parameter (lrelu's negative slope); None = def_alpha.
        gain: Output scale; None = def_gain.
        clamp: Clamp the output to [-clamp, clamp]; None = no clamping. Must be >= 0.
        impl: 'auto', 'ref' or 'cuda'.

    Returns:
        Tensor of x's shape and dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError('x must be a tensor')
    if act not in activation_funcs:
        raise ValueError(f'unknown activation {act!r}; expected one of {sorted(activation_funcs)}')
    if clamp is not None and clamp < 0:
        raise ValueError(f'clamp must be None or >= 0, got {clamp}')
    if b is not None:
        if b.ndim != 1 or not (0 <= dim < x.ndim) or b.shape[0] != x.shape[dim]:
            raise ValueError(f'bias of shape {list(b.shape)} does not match dim {dim} of x {list(x.shape)}')
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    if op_trace.active is not None:  # a meta-device audit: record the launch the CUDA path would make
        launch = dict(op='bias_act', in_shape=list(x.shape), out_shape=list(x.shape), dtype=x.dtype)
        return op_trace.active.run_op([launch], lambda: _bias_act_ref(x, b, dim, act, alpha, gain, clamp))
    if which_impl(x, impl) == 'cuda' and (impl == 'cuda' or
                                          kernel_checks.allowed('bias_act', act, x.dtype, x.device)):
        if b is None:  # dim only says where b goes: any value is valid without one, as in the reference
            if x.ndim == 0:
                return bias_act(x.reshape([1]), None, 0, act, alpha, gain, clamp if clamp >= 0 else None, impl)[0]
            dim = 0
        if clamp >= 0:  # the value a clamped output holds in x's dtype (see the module docstring)
            rounded = float(torch.tensor(clamp, dtype=x.dtype))
            clamp = rounded if np.isfinite(rounded) else clamp
        return _bias_act_cuda(dim, act, alpha, gain, clamp).apply(x, _empty(x) if b is None else b)
    return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    """Pure-PyTorch bias_act; alpha/gain/clamp already resolved (clamp < 0 = none)."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = activation_funcs[act].func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------------------------------------
# CUDA path.

_empties = dict()


def _empty(like):
    """A shared empty tensor of like's device and dtype: the kernel's "absent" argument, allocated once."""
    key = (like.device, like.dtype)
    t = _empties.get(key)
    if t is None:
        with torch.inference_mode(False):  # a normal tensor: it is saved for backward
            t = _empties[key] = torch.empty([0], device=like.device, dtype=like.dtype)
    return t


def _format_of(t):
    """Memory format whose element order t follows: channels_last for NHWC-dense 4-D tensors."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dense(t):
    """A layout the kernel can walk linearly: keep contiguous and channels_last tensors, copy the rest."""
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _align(t, like):
    """t in the same element order as `like` (the kernel indexes all its tensors by one linear index)."""
    if not like.numel():
        return _dense(t)
    return t.contiguous(memory_format=_format_of(like))


def _sum_to_bias(dx, dim):
    """Reduce a gradient w.r.t. x + b to the gradient w.r.t. b."""
    others = [i for i in range(dx.ndim) if i != dim]
    return dx.sum(others) if others else dx  # (sum over [] would sum everything)


def _split_launches(call, ts, b, dim):
    """call(ts, b, dim) in launches of at most KERNEL_MAX_NUMEL elements; ts = [x, xref, yref, dy].

    All non-empty tensors of ts share x's shape and dense layout (the binding checks it). A channels_last
    4-D call is split as its NHWC-contiguous permutation. Splits run along the leading dimension (with
    the matching part of b when dim is 0), down to single rows that are split again, so any size fits.
    """
    x = ts[0]
    if x.numel() <= KERNEL_MAX_NUMEL:
        return call(ts, b, dim)
    if not x.is_contiguous():  # channels_last: split its contiguous NHWC view, then view the result back
        perm, dim_nhwc = [0, 2, 3, 1], [0, 3, 1, 2][dim]
        out = _split_launches(call, [t.permute(perm) if t.numel() else t for t in ts], b, dim_nhwc)
        return out.permute(0, 3, 1, 2)
    if x.ndim == 1:  # contiguous chunks, with their part of b when there is one
        return torch.cat([call([t[i:i + KERNEL_MAX_NUMEL] if t.numel() else t for t in ts],
                               b[i:i + KERNEL_MAX_NUMEL] if b.numel() else b, 0)
                          for i in range(0, x.shape[0], KERNEL_MAX_NUMEL)])
    row = x[0].numel()
    if row <= KERNEL_MAX_NUMEL:  # whole rows per launch
        step = KERNEL_MAX_NUMEL // row
        parts = [call([t[i:i + step] if t.numel() else t for t in ts], b[i:i + step] if dim == 0 and b.numel() else b,
                      dim) for i in range(0, x.shape[0], step)]
        return torch.cat(parts)
    rows = []
    for i in range(x.shape[0]):  # a row is too large: split inside it
        if dim != 0:
            rows.append(_split_launches(call, [t[i] if t.numel() else t for t in ts], b, dim - 1))
            continue
        # One bias value for the whole row: view it as [1, R] and launch column ranges of it.
        flat = [t[i:i + 1].reshape([1, -1]) if t.numel() else t for t in ts]
        b_i = b[i:i + 1] if b.numel() else b
        cols = [call([t[:, j:j + KERNEL_MAX_NUMEL] if t.numel() else t for t in flat], b_i, 0)
                for j in range(0, row, KERNEL_MAX_NUMEL)]
        rows.append(torch.cat(cols, dim=1).reshape(x.shape[1:]))
    return torch.stack(rows)


@functools.lru_cache(maxsize=None)
def _bias_act_cuda(dim, act, alpha, gain, clamp):
    """autograd.Function pair for one static configuration (first and second derivatives)."""
    spec = activation_funcs[act]
    need_y = spec.ref == 'y' or clamp >= 0   # the clamp mask is evaluated on the output
    need_x = spec.ref == 'x'

    def kernel(x, b, xref, yref, dy, grad):
        plugin = _load_plugin(required=True)
        return _split_launches(lambda ts, bb, d: plugin.bias_act(ts[0], bb, ts[1], ts[2], ts[3], grad, d,
                                                                 spec.cuda_idx, alpha, gain, clamp),
                               [x, xref, yref, dy], b, dim)

    def grad_kernel(g, x, b, y, dy, order):
        """Derivative kernel; brings g (and dy) into the element order of the saved x or y first."""
        x = _dense(x) if x.numel() else x
        like = x if x.numel() else y
        g = _align(g, like)
        dy = _align(dy, like) if dy.numel() else dy
        return kernel(g, b.contiguous(), x, y, dy, order)

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            empty = _empty(x)
            y = kernel(_dense(x), b.contiguous(), empty, empty, empty, 0)
            # Save the inputs themselves (not dense copies) so double backward reaches x and b.
            ctx.save_for_backward(x if need_x else empty, b if need_x else empty, y if need_y else empty)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.needs_input_grad[1]:
                db = _sum_to_bias(dx, dim)
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        """dx = dy * d(act(x+b)*gain)/dx, masked by the clamp; linear in dy."""

        @staticmethod
        def forward(ctx, dy, x, b, y):
            ctx.save_for_backward(dy if spec.has_2nd_grad else _empty(dy), x, b, y)
            return grad_kernel(dy, x, b, y, _empty(dy), 1)

        @staticmethod
        def backward(ctx, d_dx):
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = d_y = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            if spec.has_2nd_grad and any(ctx.needs_input_grad[1:]):
                # d_dx * dy * (second derivative w.r.t. the reference tensor), masked by the clamp.
                # Not differentiable again: third derivatives are unsupported (as upstream).
                d2 = grad_kernel(d_dx, x, b, y, dy, 2)
                if spec.ref == 'x':
                    d_x = d2 if ctx.needs_input_grad[1] else None
                    d_b = _sum_to_bias(d2, dim) if ctx.needs_input_grad[2] and b.numel() else None
                else:
                    d_y = d2 if ctx.needs_input_grad[3] else None
            return d_dy, d_x, d_b, d_y

    return BiasActCuda



# ----------------------------------------------------------------------------------------------------------
# Self-check of each activation's kernel (torch_utils/kernel_checks.py).

def _check_variant(act, dtype, device):
    """Kernel vs float64 reference for one activation: output, gradients w.r.t. x and b, and (for
    activations with a second derivative) the gradient of the x-gradient, on a small random call."""
    spec = activation_funcs[act]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn([3, 16, 5, 7], generator=gen) * 2).to(device=device, dtype=dtype).requires_grad_(True)
    b = torch.randn([16], generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    args = (1, act, float(spec.def_alpha), float(spec.def_gain), -1.0)
    fn = _bias_act_cuda(*args)
    fn.apply(x, b)  # warm-up (first launch)
    y, kernel_ms = kernel_checks.timed(lambda: fn.apply(x, b), device)
    _, ref_ms = kernel_checks.timed(lambda: _bias_act_ref(x.detach(), b.detach(), *args), device)
    x64, b64 = [t.detach().to(torch.float64).requires_grad_(True) for t in (x, b)]
    y64 = _bias_act_ref(x64, b64, *args)
    dy = torch.randn(y.shape, generator=gen).to(device=device, dtype=dtype)
    grads = torch.autograd.grad(y, [x, b], dy, create_graph=spec.has_2nd_grad)
    grads64 = torch.autograd.grad(y64, [x64, b64], dy.to(torch.float64), create_graph=spec.has_2nd_grad)
    pairs = [(y, y64), *zip(grads, grads64)]
    if spec.has_2nd_grad:
        v = torch.randn(x.shape, generator=gen).to(device=device, dtype=dtype)
        pairs.append((torch.autograd.grad(grads[0], [x], v)[0], torch.autograd.grad(grads64[0], [x64], v.double())[0]))
    err = max(kernel_checks.max_error(got, want) for got, want in pairs)
    return dict(max_error=err, tolerance=kernel_checks.tolerance(dtype), kernel_ms=kernel_ms, ref_ms=ref_ms)


@functools.lru_cache(maxsize=None)
def _build_name():
    return custom_ops.build_name(_PLUGIN_NAME, _SOURCES + _HEADERS, _BUILD_KWARGS)


kernel_checks.register('bias_act', _check_variant, _build_name)
