"""Bilinear grid sampling whose input gradient can be differentiated again, on every device.

R1 regularisation through the ADA pipe differentiates the augmented image twice w.r.t. the input.
`torch.nn.functional.grid_sample` has no double backward on some builds (CUDA on several 2.x
releases raises "derivative for aten::grid_sampler_2d_backward is not implemented"). Instead of
probing for that, this module always runs torch's own kernels and writes the second derivative
itself:
  forward:         aten::grid_sampler_2d (torch's native kernel);
  backward:        aten::grid_sampler_2d_backward (also native; the grid gradient only when needed);
  double backward: the input gradient is linear in the output gradient, with adjoint "sample at the
                   same grid", so the derivative w.r.t. the output gradient is grid_sample again.
No indexing/gather formulation is used on any device. Second-order gradients through the *grid*
are not supported (ADA's grid is built from random draws and never needs them); asking for one
raises.

Semantics: mode='bilinear', padding_mode='zeros', align_corners=False, i.e. for a normalised
coordinate g in [-1, 1] the source pixel position is ((g + 1) * size - 1) / 2 and taps outside the
image read 0. Module name, flag and `grid_sample(input, grid)` match NVIDIA's module of this name,
so code pickled with a reference to it also runs in their tree.
"""

import torch

# True: the custom autograd path above. False: plain F.grid_sample (torch's autograd), whose double
# backward may be missing on some builds. The training loop sets it True, as upstream's does.
enabled = True

_BILINEAR, _ZEROS, _ALIGN_CORNERS = 0, 0, False  # aten's enum values for the fixed semantics


def grid_sample(input, grid):
    """Sample `input` [N, C, H, W] at `grid` [N, Ho, Wo, 2] (x, y in [-1, 1]).

    Args:
        input: Images; float16/32/64.
        grid: Normalised sampling positions, last axis (x, y), same dtype as input.

    Returns:
        [N, C, Ho, Wo] tensor.
    """
    if input.ndim != 4 or grid.ndim != 4 or grid.shape[0] != input.shape[0] or grid.shape[3] != 2:
        raise ValueError(f'grid_sample needs input [N, C, H, W] and grid [N, Ho, Wo, 2], '
                         f'got {list(input.shape)} and {list(grid.shape)}')
    if not enabled:
        return torch.nn.functional.grid_sample(input, grid, mode='bilinear', padding_mode='zeros',
                                               align_corners=False)
    return _GridSample2dForward.apply(input, grid)


class _GridSample2dForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, grid):
        ctx.save_for_backward(input, grid)
        return torch.grid_sampler_2d(input, grid, _BILINEAR, _ZEROS, _ALIGN_CORNERS)

    @staticmethod
    def backward(ctx, grad_output):
        input, grid = ctx.saved_tensors
        need_input, need_grid = ctx.needs_input_grad[:2]
        grad_input, grad_grid = _GridSample2dBackward.apply(grad_output, input, grid, need_input, need_grid)
        return grad_input, grad_grid


class _GridSample2dBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_output, input, grid, need_input, need_grid):
        ctx.set_materialize_grads(False)  # None (not zeros) for outputs the caller did not use
        ctx.save_for_backward(grid)
        op = torch.ops.aten.grid_sampler_2d_backward
        grad_input, grad_grid = op(grad_output, input, grid, _BILINEAR, _ZEROS, _ALIGN_CORNERS,
                                   [bool(need_input), bool(need_grid)])
        return (grad_input if need_input else None), (grad_grid if need_grid else None)

    @staticmethod
    def backward(ctx, grad2_grad_input, grad2_grad_grid):
        grid, = ctx.saved_tensors
        if grad2_grad_grid is not None or (ctx.needs_input_grad[2] and grad2_grad_input is not None):
            raise NotImplementedError('grid_sample_gradfix: no second-order gradient through the grid')
        grad2_grad_output = None
        if ctx.needs_input_grad[0] and grad2_grad_input is not None:
            grad2_grad_output = _GridSample2dForward.apply(grad2_grad_input, grid)
        # The input gradient does not depend on the input (sampling is linear in it): no term for it.
        return grad2_grad_output, None, None, None, None
