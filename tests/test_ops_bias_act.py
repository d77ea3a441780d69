"""bias_act: the reference against direct float64 formulas, its gradients, and CUDA against ref."""

import numpy as np
import pytest
import torch

from torch_utils.ops import bias_act as B

SELU_L, SELU_A = 1.0507009873554805, 1.6732632423543772

# Written from the activations' closed forms and default gains, not from the module under test.
NAIVE = {
    'linear':   lambda x, a: x,
    'relu':     lambda x, a: np.maximum(x, 0),
    'lrelu':    lambda x, a: np.where(x > 0, x, a * x),
    'tanh':     lambda x, a: np.tanh(x),
    'sigmoid':  lambda x, a: 1 / (1 + np.exp(-x)),
    'elu':      lambda x, a: np.where(x >= 0, x, np.expm1(x)),
    'selu':     lambda x, a: SELU_L * np.where(x >= 0, x, SELU_A * np.expm1(x)),
    'softplus': lambda x, a: np.log1p(np.exp(x)),
    'swish':    lambda x, a: x / (1 + np.exp(-x)),
}
DEFAULTS = {  # act: (def_alpha, def_gain)
    'linear': (0, 1), 'relu': (0, np.sqrt(2)), 'lrelu': (0.2, np.sqrt(2)), 'tanh': (0, 1), 'sigmoid': (0, 1),
    'elu': (0, 1), 'selu': (0, 1), 'softplus': (0, 1), 'swish': (0, np.sqrt(2)),
}
ACTS = sorted(NAIVE)


def naive_bias_act(x, b, dim, act, alpha, gain, clamp):
    x = np.asarray(x, dtype=np.float64)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + np.asarray(b, dtype=np.float64).reshape(shape)
    y = NAIVE[act](x, alpha) * gain
    return y if clamp is None else np.clip(y, -clamp, clamp)


def test_activation_table_matches_facts():
    assert sorted(B.activation_funcs) == ACTS
    for act, (alpha, gain) in DEFAULTS.items():
        spec = B.activation_funcs[act]
        assert spec.def_alpha == pytest.approx(alpha) and spec.def_gain == pytest.approx(gain), act
    assert [B.activation_funcs[a].cuda_idx for a in
            ['linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish']] == list(range(1, 10))


@pytest.mark.parametrize('act', ACTS)
def test_ref_defaults_match_formula(act):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal([3, 4, 5]) * 3)
    b = torch.tensor(rng.standard_normal(4))
    y = B.bias_act(x, b, act=act, impl='ref')
    alpha, gain = DEFAULTS[act]
    np.testing.assert_allclose(y.numpy(), naive_bias_act(x, b, 1, act, alpha, gain, None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('dim,b_on', [(0, True), (2, True), (1, False)])
def test_ref_custom_alpha_gain_clamp(act, dim, b_on):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal([3, 4, 5]) * 3)
    b = torch.tensor(rng.standard_normal(x.shape[dim])) if b_on else None
    y = B.bias_act(x, b, dim=dim, act=act, alpha=0.3, gain=1.7, clamp=1.1, impl='ref')
    np.testing.assert_allclose(y.numpy(), naive_bias_act(x, b, dim, act, 0.3, 1.7, 1.1), rtol=1e-12, atol=1e-12)
    assert y.abs().max() <= 1.1


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 1e-2), (torch.float32, 1e-6)])
def test_ref_low_precision(dtype, tol):
    x = torch.randn([2, 8, 3, 3], dtype=torch.float64)
    b = torch.randn([8], dtype=torch.float64)
    y = B.bias_act(x.to(dtype), b.to(dtype), act='lrelu', clamp=256, impl='ref')
    assert y.dtype == dtype
    np.testing.assert_allclose(y.double().numpy(), naive_bias_act(x, b, 1, 'lrelu', 0.2, np.sqrt(2), 256),
                               rtol=tol, atol=tol)


def test_ref_channels_last_and_empty():
    x = torch.randn([2, 5, 3, 4], dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    b = torch.randn([5], dtype=torch.float64)
    np.testing.assert_allclose(B.bias_act(x, b, act='swish').numpy(),
                               naive_bias_act(x, b, 1, 'swish', 0, np.sqrt(2), None), atol=1e-12)
    assert B.bias_act(torch.zeros([0, 5]), torch.zeros([5]), act='tanh').shape == (0, 5)


@pytest.mark.parametrize('act', ACTS)
def test_ref_gradcheck_and_gradgradcheck(act):
    torch.manual_seed(0)
    x = (torch.randn([2, 3, 2], dtype=torch.float64) * 2).requires_grad_(True)
    b = torch.randn([3], dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: B.bias_act(x, b, act=act, clamp=2.5, impl='ref')  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x, b])
    assert torch.autograd.gradgradcheck(fn, [x, b])


def test_invalid_arguments_raise():
    x = torch.randn([2, 3])
    with pytest.raises(ValueError):
        B.bias_act(x, act='gelu')
    with pytest.raises(ValueError):
        B.bias_act(x, torch.zeros(2))  # wrong bias length for dim 1
    with pytest.raises(ValueError):
        B.bias_act(x, clamp=-1)


def test_cpu_takes_reference_path():
    assert B.which_impl(torch.zeros(1)) == 'ref'
    with pytest.raises(ValueError):
        B.which_impl(torch.zeros(1), 'cuda')


def test_small_tensors_take_the_pytorch_path_under_auto(monkeypatch):
    """With a kernel available, 'auto' uses it only above SMALL_NUMEL; 'cuda' always uses it."""
    from torch_utils import custom_ops
    monkeypatch.setattr(custom_ops, 'choose_impl', lambda x, impl, load: 'ref' if impl == 'ref' else 'cuda')
    monkeypatch.setattr(B, '_load_plugin', lambda required: _KernelFormulaPlugin)
    monkeypatch.setattr(_KernelFormulaPlugin, 'calls', [])
    monkeypatch.setattr(B.kernel_checks, 'allowed', lambda *args: True)  # (the first-use check launches too)
    small = torch.randn([4, B.SMALL_NUMEL // 4], dtype=torch.float64)
    large = torch.randn([4, B.SMALL_NUMEL // 4 + 1], dtype=torch.float64)
    assert (B.which_impl(small), B.which_impl(large), B.which_impl(small, 'cuda')) == ('ref', 'cuda', 'cuda')
    for x in (small, large):
        b = torch.randn([4], dtype=torch.float64)
        torch.testing.assert_close(B.bias_act(x, b, dim=0, act='lrelu', clamp=1.0),
                                   B.bias_act(x, b, dim=0, act='lrelu', clamp=1.0, impl='ref'))
    assert _KernelFormulaPlugin.calls == [0]  # only the large tensor reached the kernel


def test_absent_tensors_share_one_empty_per_device_and_dtype():
    x = torch.zeros(3)
    assert B._empty(x) is B._empty(torch.ones(5)) and B._empty(x).numel() == 0
    assert B._empty(x.double()) is not B._empty(x)
    with torch.inference_mode():
        B._empties.clear()
        e = B._empty(x)
    assert not e.is_inference()  # may be saved for backward later


# ----------------------------------------------------------------------------------------------------------
# CUDA kernel against the reference.

FWD_TOL = {torch.float16: dict(rtol=1e-2, atol=1e-2), torch.float32: dict(rtol=1e-5, atol=1e-5),
           torch.float64: dict(rtol=1e-6, atol=1e-6)}   # float64 math is exact; fast-math only touches float


def _gpu_x(dtype, layout, shape=(3, 6, 5, 7)):
    x = torch.randn(shape, device='cuda') * 3
    if layout == 'channels_last':
        return x.to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == 'strided':
        x = (torch.randn([shape[0], shape[1], shape[2], shape[3] * 2], device='cuda') * 3).to(dtype)[..., ::2]
        assert not x.is_contiguous()  # the wrapper must copy it into a dense layout for the kernel
        return x
    return x.to(dtype)


def _keep_away_from_clamp(y, clamp):
    """Inputs whose output lands within 1e-3 of +-clamp are excluded: the kernel masks the gradient on the
    open interval, the reference on the closed one (documented difference)."""
    return (y.abs() - clamp).abs() > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
@pytest.mark.parametrize('clamp', [None, 2.0])
def test_cuda_forward_matches_ref(act, dtype, layout, clamp):
    assert B.which_impl(torch.zeros(1, device='cuda'), 'cuda') == 'cuda'
    x = _gpu_x(dtype, layout)
    b = torch.randn([x.shape[1]], device='cuda').to(dtype)
    y_cuda = B.bias_act(x, b, act=act, alpha=0.25, clamp=clamp, impl='cuda')
    y_ref = B.bias_act(x.double(), b.double(), act=act, alpha=0.25, clamp=clamp, impl='ref')
    assert y_cuda.dtype == dtype and y_cuda.shape == x.shape
    torch.testing.assert_close(y_cuda.double(), y_ref, **FWD_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
@pytest.mark.parametrize('clamp,dim', [(None, 1), (2.0, 1), (None, 3)])
def test_cuda_first_and_second_grads_match_ref(act, dtype, clamp, dim):
    x0 = torch.randn([4, 6, 5, 7], device='cuda') * 3
    b0 = torch.randn([x0.shape[dim]], device='cuda')
    out = {}
    for impl in ('cuda', 'ref'):
        x = x0.to(dtype if impl == 'cuda' else torch.float64).requires_grad_(True)
        b = b0.to(x.dtype).requires_grad_(True)
        y = B.bias_act(x, b, dim=dim, act=act, clamp=clamp, impl=impl)
        dy = torch.cos(torch.arange(y.numel(), device='cuda', dtype=torch.float64)).reshape(y.shape).to(y.dtype)
        dy.requires_grad_(True)
        gx, gb = torch.autograd.grad(y, [x, b], dy, create_graph=True)
        # Second order w.r.t. x, b and dy (the R1 path); unused inputs (piecewise-linear acts) count as zero.
        second = torch.autograd.grad((gx.double() ** 2).sum() + gb.double().sum(), [x, b, dy], allow_unused=True)
        ggx, ggb, ggdy = [torch.zeros_like(t) if g is None else g for g, t in zip(second, [x, b, dy])]
        out[impl] = [y.detach().double(), gx.detach().double(), gb.detach().double(), ggx.double(), ggb.double(),
                     ggdy.double()]
    keep = torch.ones_like(out['ref'][0], dtype=torch.bool) if clamp is None else \
        _keep_away_from_clamp(out['ref'][0], clamp)
    # Inputs that round across the relu/lrelu kink in fp16 take the other branch's slope: skip the kink.
    shape = [1] * x0.ndim
    shape[dim] = -1
    keep &= ((x0 + b0.reshape(shape)).double().abs() > 1e-2)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out['cuda'][1][keep], out['ref'][1][keep], **tol)
    torch.testing.assert_close(out['cuda'][3][keep], out['ref'][3][keep], **tol)
    torch.testing.assert_close(out['cuda'][5][keep], out['ref'][5][keep], **tol)
    if bool(keep.all()):  # bias gradients sum over everything, so only compare where nothing is excluded
        for i in (2, 4):
            scale = max(1.0, out['ref'][i].abs().max().item())
            torch.testing.assert_close(out['cuda'][i] / scale, out['ref'][i] / scale, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize('act', ['lrelu', 'tanh', 'swish', 'softplus'])
def test_cuda_gradcheck_float64(act):
    x = (torch.randn([2, 3, 4], device='cuda', dtype=torch.float64) * 2).requires_grad_(True)
    b = torch.randn([3], device='cuda', dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: B.bias_act(x, b, act=act, impl='cuda')  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x, b])
    assert torch.autograd.gradgradcheck(fn, [x, b])


@pytest.mark.gpu
def test_cuda_clamp_gradient_is_strict_and_cpu_agrees():
    x = torch.tensor([[-3.0, -1.0, 0.5, 1.0, 3.0]], device='cuda', requires_grad=True)
    y = B.bias_act(x, act='linear', clamp=1.0, impl='cuda')
    g, = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]  # +-1 exactly is saturated in the CUDA path
    xc = torch.randn([0, 4], device='cuda')
    assert B.bias_act(xc, torch.zeros(4, device='cuda'), act='relu', impl='cuda').shape == (0, 4)
    x = torch.randn([1, 8, 3, 3])
    b = torch.randn([8])
    torch.testing.assert_close(B.bias_act(x.cuda(), b.cuda(), act='lrelu', impl='cuda').cpu(),
                               B.bias_act(x, b, act='lrelu'), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The CUDA path's autograd plumbing on CPU: the plugin is replaced by a torch transcription of the kernel's
# formulas (bias_act.cu: forward, grad=1 from t = y/gain or z, grad=2, strict clamp mask). This checks the
# Function pair, which tensors are saved, layout alignment and double backward without a GPU.

def _sig(z):
    return torch.sigmoid(z)


_D1 = {  # d act / dz, in terms of (z, t = act(z), alpha, sign = y*gain), as in the kernel
    1: lambda z, t, a, s: torch.ones_like(t), 2: lambda z, t, a, s: (s > 0).to(t.dtype),
    3: lambda z, t, a, s: torch.where(s > 0, torch.ones_like(t), torch.full_like(t, a)), 4: lambda z, t, a, s: 1 - t * t,
    5: lambda z, t, a, s: t * (1 - t), 6: lambda z, t, a, s: torch.where(t >= 0, 1.0, t + 1),
    7: lambda z, t, a, s: torch.where(t >= 0, SELU_L, t + SELU_L * SELU_A),
    8: lambda z, t, a, s: 1 - torch.exp(-t), 9: lambda z, t, a, s: _sig(z) * (1 + z * (1 - _sig(z))),
}
_D2 = {  # derivative of (d1 * gain) w.r.t. the ref tensor (y, or z for swish), as in the kernel
    4: lambda z, t, g: -2 * t, 5: lambda z, t, g: 1 - 2 * t, 6: lambda z, t, g: (t < 0).to(t.dtype),
    7: lambda z, t, g: (t < 0).to(t.dtype), 8: lambda z, t, g: torch.exp(-t),
    9: lambda z, t, g: _sig(z) * (1 - _sig(z)) * (2 + z * (1 - 2 * _sig(z))) * g,
}


class _KernelFormulaPlugin:
    calls = []

    @classmethod
    def bias_act(cls, x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
        for t in (xref, yref, dy):  # the binding's layout rule
            assert t.numel() == 0 or (t.shape == x.shape and t.stride() == x.stride())
        cls.calls.append(grad)
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        bias = b.reshape(shape) if b.numel() else 0
        name = {s.cuda_idx: n for n, s in B.activation_funcs.items()}[act]
        if grad == 0:
            y = B.activation_funcs[name].func(x + bias, alpha=alpha) * gain
            return y.clamp(-clamp, clamp) if clamp >= 0 else y
        y = yref if yref.numel() else torch.zeros_like(x)
        z = xref + bias if xref.numel() else torch.zeros_like(x)
        t = y / gain
        mask = (y.abs() < clamp).to(x.dtype) if clamp >= 0 else 1
        if grad == 1:
            return x * _D1[act](z, t, alpha, y * gain) * gain * mask
        return x * dy * _D2[act](z, t, gain) * mask


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize('offset,numel', [(0, 4099), (1, 4096), (3, 4101), (2, 1 << 17)])
def test_cuda_vector_and_tail_paths_match_ref(dtype, offset, numel):
    """Groups of 4 with vector loads, unaligned views (scalar path) and sizes that leave a tail."""
    g = torch.Generator().manual_seed(numel + offset)
    base = (torch.randn([numel + offset], generator=g) * 3).to(device='cuda', dtype=dtype)
    x = base[offset:].reshape(-1, 1) if numel % 2 else base[offset:].reshape(-1, 2)
    b = torch.randn([x.shape[1]], generator=g).to(device='cuda', dtype=dtype)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-5)
    for act in ('lrelu', 'swish', 'tanh'):
        xc = x.detach().requires_grad_(True)
        xr = x.detach().double().requires_grad_(True)
        yc = B.bias_act(xc, b, act=act, clamp=4.0, impl='cuda')
        yr = B.bias_act(xr, b.double(), act=act, clamp=4.0, impl='ref')
        torch.testing.assert_close(yc.double(), yr, **tol)
        dy = torch.cos(torch.arange(yc.numel(), device='cuda', dtype=torch.float64)).reshape(yc.shape)
        (gc,) = torch.autograd.grad(yc, [xc], dy.to(dtype))
        (gr,) = torch.autograd.grad(yr, [xr], dy)
        mask = (yr.abs() < 4.0 - 1e-2)  # away from the clamp edge (strict vs closed interval)
        torch.testing.assert_close(gc.double()[mask], gr[mask], **tol)


@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('clamp,layout', [(None, 'contiguous'), (1.5, 'channels_last'), (None, 'strided')])
def test_cuda_function_plumbing_with_formula_plugin(monkeypatch, act, clamp, layout):
    monkeypatch.setattr(B, '_load_plugin', lambda required: _KernelFormulaPlugin)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn([2, 3, 4, 5], dtype=torch.float64, generator=g) * 2
    if layout == 'channels_last':
        x0 = x0.contiguous(memory_format=torch.channels_last)
    elif layout == 'strided':
        x0 = torch.randn([2, 3, 4, 10], dtype=torch.float64, generator=g)[..., ::2] * 2
    b0 = torch.randn([3], dtype=torch.float64, generator=g)
    alpha, gain = 0.3, 1.7
    out = {}
    for name in ('cuda', 'ref'):
        x = x0.clone().requires_grad_(True)
        b = b0.clone().requires_grad_(True)
        if name == 'cuda':
            y = B._bias_act_cuda(1, act, alpha, gain, -1.0 if clamp is None else clamp).apply(x, b)
        else:
            y = B._bias_act_ref(x, b, 1, act, alpha, gain, -1.0 if clamp is None else clamp)
        dy = torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape).requires_grad_(True)
        gx, gb = torch.autograd.grad(y, [x, b], dy, create_graph=True)
        second = torch.autograd.grad((gx * torch.sin(gx)).sum() + gb.square().sum(), [x, b, dy], allow_unused=True)
        out[name] = [y, gx, gb] + [torch.zeros_like(t) if s is None else s for s, t in zip(second, [x, b, dy])]
    for got, want in zip(out['cuda'], out['ref']):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-9, atol=1e-9)
    assert 0 in _KernelFormulaPlugin.calls and 1 in _KernelFormulaPlugin.calls
