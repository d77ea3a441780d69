"""grid_sample_gradfix: native forward/backward, its own double backward, and the path it takes."""

import collections

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from torch_utils.ops import grid_sample_gradfix as GS


def _inputs(dtype=torch.float64, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([2, 3, 5, 7], generator=g, dtype=dtype)
    # Include points outside [-1, 1] so the zero padding is exercised.
    grid = (torch.rand([2, 4, 6, 2], generator=g, dtype=dtype) * 2.6 - 1.3)
    return x.to(device), grid.to(device)


def _native(x, grid):
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


class _AtenLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_matches_native_forward_and_both_gradients():
    x, grid = _inputs()
    x.requires_grad_(True)
    grid.requires_grad_(True)
    y, y_nat = GS.grid_sample(x, grid), _native(x, grid)
    torch.testing.assert_close(y, y_nat, rtol=0, atol=0)
    dy = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, grid], dy)
    native = torch.autograd.grad(y_nat, [x, grid], dy)
    for a, b in zip(ours, native):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_double_backward_matches_native_on_cpu():
    """R1's pattern: a loss on the input gradient, differentiated w.r.t. the input's upstream."""
    x, grid = _inputs()
    w = torch.randn_like(x).requires_grad_(True)  # something upstream of the sampled image

    def r1(sample):
        y = sample(x * w, grid)
        (g,) = torch.autograd.grad(y.square().sum(), [w], create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), [w])
        return g, gg

    for a, b in zip(r1(GS.grid_sample), r1(_native)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_and_gradgradcheck_in_float64():
    x, grid = _inputs()
    x = x[:1, :2].clone().requires_grad_(True)
    grid = grid[:1].clone()
    assert torch.autograd.gradcheck(lambda t: GS.grid_sample(t, grid), [x])
    assert torch.autograd.gradgradcheck(lambda t: GS.grid_sample(t, grid), [x])
    # Third order too: the double backward is itself a grid_sample.
    assert torch.autograd.gradgradcheck(
        lambda t: torch.autograd.grad(GS.grid_sample(t, grid).square().sum(), [t], create_graph=True)[0], [x])
    # First-order gradient w.r.t. the grid (piecewise linear: fine away from cell edges).
    grid.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, g: GS.grid_sample(t, g), [x, grid])


def test_second_order_through_the_grid_is_refused():
    x, grid = _inputs()
    x.requires_grad_(True)
    grid.requires_grad_(True)
    (g,) = torch.autograd.grad(GS.grid_sample(x, grid).square().sum(), [x], create_graph=True)
    with pytest.raises(NotImplementedError, match='grid'):
        torch.autograd.grad(g.square().sum(), [grid])


def test_only_native_kernels_run_forward_backward_and_double_backward():
    """No gather/indexing fallback: every sampling step is aten's grid sampler (the active path)."""
    x, grid = _inputs(dtype=torch.float32)
    x.requires_grad_(True)
    with _AtenLog() as log:
        y = GS.grid_sample(x, grid)
        (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        torch.autograd.grad(g.square().sum(), [x])
    sampling = {'grid_sampler_2d': 2, 'grid_sampler_2d_backward': 2}  # forward and double backward
    assert {k: log.ops[k] for k in sampling} == sampling, dict(log.ops)
    forbidden = {'gather', 'index', 'index_select', 'take_along_dim', 'scatter_add', 'index_put', 'floor'}
    assert not forbidden & set(log.ops), dict(log.ops)
    assert type(y.grad_fn).__name__ == '_GridSample2dForwardBackward'


def test_disabled_flag_gives_plain_torch(monkeypatch):
    x, grid = _inputs()
    x.requires_grad_(True)
    monkeypatch.setattr(GS, 'enabled', False)
    y = GS.grid_sample(x, grid)
    assert type(y.grad_fn).__name__.startswith('GridSampler2DBackward')
    torch.testing.assert_close(y, _native(x, grid), rtol=0, atol=0)


def test_bad_shapes_are_one_clear_error():
    x, grid = _inputs()
    with pytest.raises(ValueError, match='grid_sample needs'):
        GS.grid_sample(x, grid[..., :1])
    with pytest.raises(ValueError, match='grid_sample needs'):
        GS.grid_sample(x[0], grid)


def test_identity_grid_reproduces_the_image():
    x, _ = _inputs()
    theta = torch.eye(2, 3, dtype=x.dtype).expand(2, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    torch.testing.assert_close(GS.grid_sample(x, grid), x, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cuda_matches_native_and_supports_double_backward(dtype):
    x, grid = _inputs(dtype=dtype, device='cuda')
    x.requires_grad_(True)
    y = GS.grid_sample(x, grid)
    torch.testing.assert_close(y, _native(x, grid), rtol=0, atol=0)
    (g,) = torch.autograd.grad(y.float().square().sum(), [x], create_graph=True)
    (gg,) = torch.autograd.grad(g.float().square().sum(), [x])
    assert torch.isfinite(gg).all()
    # Same double backward as the CPU path (which matches torch's own there).
    xc, gc = x.detach().double().cpu().requires_grad_(True), grid.double().cpu()
    (g_c,) = torch.autograd.grad(GS.grid_sample(xc, gc).square().sum(), [xc], create_graph=True)
    (gg_c,) = torch.autograd.grad(g_c.square().sum(), [xc])
    tol = 1e-2 if dtype == torch.float16 else 1e-4
    torch.testing.assert_close(gg.double().cpu(), gg_c, rtol=tol, atol=tol)
