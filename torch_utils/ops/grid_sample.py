"""Bilinear grid sampling that can be differentiated twice on every PyTorch build.

R1 regularisation through the ADA pipe differentiates the augmented image twice w.r.t. the input.
`torch.nn.functional.grid_sample` supports that on some builds and not on others (e.g. CUDA on
torch 2.11 raises "derivative for aten::grid_sampler_2d_backward is not implemented"). Upstream
patched this with private aten ops that have since changed signature; we instead *detect* the
feature once per device type and, where it is missing, use a reference written in plain indexing
ops, whose derivatives of every order come from autograd.

Semantics (both paths): mode='bilinear', padding_mode='zeros', align_corners=False, i.e. for a
normalised coordinate g in [-1, 1] the source pixel position is ((g + 1) * size - 1) / 2, and taps
outside the image read 0.
"""

import torch
import torch.nn.functional as F

from .. import misc

_native_double_backward = {}  # device type -> bool, probed once


def grid_sample(x, grid, impl='auto'):
    """Sample `x` [N, C, H, W] at `grid` [N, Ho, Wo, 2] (x, y in [-1, 1]); returns [N, C, Ho, Wo].

    Args:
        x: Input images.
        grid: Normalised sampling positions, last axis (x, y).
        impl: 'native' (torch's kernel), 'ref' (indexing ops), or 'auto' (native where its double
            backward works on this device type, else ref).
    """
    N, C = x.shape[:2]
    misc.assert_shape(grid, [N, None, None, 2])
    if which_impl(x, impl) == 'native':
        return F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    return _grid_sample_ref(x, grid)


def which_impl(x, impl='auto'):
    """The path grid_sample(x, ..., impl) takes: 'native' or 'ref'."""
    if impl not in ('auto', 'native', 'ref'):
        raise ValueError(f"impl must be 'auto', 'native' or 'ref', got {impl!r}")
    if impl != 'auto':
        return impl
    return 'native' if native_double_backward_works(x.device) else 'ref'


def native_double_backward_works(device):
    """Whether F.grid_sample's input gradient can itself be differentiated on this device type."""
    kind = torch.device(device).type
    if kind not in _native_double_backward:
        _native_double_backward[kind] = _probe(torch.device(device))
    return _native_double_backward[kind]


def _probe(device):
    # Fixed inputs, no random draws: the probe runs on first use, and taking numbers from the global
    # generator would shift every later draw in a run depending on whether the probe had run yet.
    x = torch.linspace(-1, 1, 16, device=device).reshape(1, 1, 4, 4).requires_grad_(True)
    grid = torch.linspace(-0.8, 0.7, 18, device=device).reshape(1, 3, 3, 2)
    try:
        y = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
        (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        torch.autograd.grad(g.square().sum(), [x])
        return True
    except RuntimeError as e:
        if 'not implemented' in str(e):
            return False
        raise  # anything else is a real error, not a missing feature


def _grid_sample_ref(x, grid):
    N, C, H, W = x.shape
    Ho, Wo = grid.shape[1:3]
    gx = ((grid[..., 0].to(x.dtype) + 1) * W - 1) / 2  # [N, Ho, Wo] source column
    gy = ((grid[..., 1].to(x.dtype) + 1) * H - 1) / 2  # source row
    x0, y0 = gx.floor(), gy.floor()
    wx1, wy1 = gx - x0, gy - y0  # bilinear weights of the right / lower taps
    x0, y0 = x0.long(), y0.long()
    flat = x.reshape(N, C, H * W)

    def tap(ix, iy, weight):
        inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
        idx = (iy.clamp(0, H - 1) * W + ix.clamp(0, W - 1)).reshape(N, 1, Ho * Wo).expand(N, C, Ho * Wo)
        vals = flat.gather(2, idx).reshape(N, C, Ho, Wo)
        return vals * (weight * inside.to(x.dtype)).unsqueeze(1)  # zeros padding

    return (tap(x0, y0, (1 - wx1) * (1 - wy1)) + tap(x0 + 1, y0, wx1 * (1 - wy1)) +
            tap(x0, y0 + 1, (1 - wx1) * wy1) + tap(x0 + 1, y0 + 1, wx1 * wy1))
