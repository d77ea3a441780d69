"""grid_sample: the indexing-op reference against torch's kernel, its double backward, path choice."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import grid_sample as GS


def _inputs(dtype=torch.float64, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([2, 3, 5, 7], generator=g, dtype=dtype)
    # Include points outside [-1, 1] so the zero padding is exercised.
    grid = (torch.rand([2, 4, 6, 2], generator=g, dtype=dtype) * 2.6 - 1.3)
    return x.to(device), grid.to(device)


def test_ref_matches_native_forward_and_backward():
    x, grid = _inputs()
    x.requires_grad_(True)
    y_ref = GS.grid_sample(x, grid, impl='ref')
    y_nat = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    torch.testing.assert_close(y_ref, y_nat, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y_ref)
    (g_ref,) = torch.autograd.grad(y_ref, [x], dy)
    (g_nat,) = torch.autograd.grad(y_nat, [x], dy)
    torch.testing.assert_close(g_ref, g_nat, rtol=1e-12, atol=1e-12)


def test_ref_identity_grid_reproduces_the_image():
    x, _ = _inputs()
    theta = torch.eye(2, 3, dtype=x.dtype).expand(2, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    torch.testing.assert_close(GS.grid_sample(x, grid, impl='ref'), x, rtol=1e-12, atol=1e-12)


def test_ref_gradgradcheck():
    x, grid = _inputs()
    x = x[:1, :1].clone().requires_grad_(True)
    grid = grid[:1]
    assert torch.autograd.gradcheck(lambda t: GS.grid_sample(t, grid, impl='ref'), [x])
    assert torch.autograd.gradgradcheck(lambda t: GS.grid_sample(t, grid, impl='ref'), [x])


def test_auto_picks_native_only_where_double_backward_works(monkeypatch):
    x, _ = _inputs(dtype=torch.float32)
    expected = 'native' if GS.native_double_backward_works(x.device) else 'ref'
    assert GS.which_impl(x) == expected
    # A build without the double backward must route to the reference.
    monkeypatch.setitem(GS._native_double_backward, 'cpu', False)
    assert GS.which_impl(x) == 'ref'
    with pytest.raises(ValueError, match='impl'):
        GS.which_impl(x, 'cuda')


def test_probe_leaves_the_global_rng_alone(monkeypatch):
    """The first-use probe must not shift a training run's random stream (continue = bit-identical)."""
    monkeypatch.delitem(GS._native_double_backward, 'cpu', raising=False)
    state = torch.get_rng_state()
    GS.native_double_backward_works('cpu')
    assert 'cpu' in GS._native_double_backward  # the probe did run
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.gpu
def test_cuda_ref_matches_native_and_supports_double_backward():
    x, grid = _inputs(dtype=torch.float32, device='cuda')
    x.requires_grad_(True)
    y = GS.grid_sample(x, grid, impl='ref')
    torch.testing.assert_close(y, F.grid_sample(x, grid, align_corners=False), rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), [x])
    assert torch.isfinite(gg).all()
    # 'auto' must always give a path whose double backward works on this device.
    y = GS.grid_sample(x, grid)
    (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    torch.autograd.grad(g.square().sum(), [x])
