"""upfirdn2d: the reference against an independent float64 formula, its gradients, and CUDA against ref.

The independent formula is written in scatter form: output o receives input i through tap
t = i*up + pad0 - o*down of the correlation kernel (the filter reversed unless flip_filter), for every
t inside the filter. It shares no code path with the reference (which zero-inserts, pads and calls conv2d).
"""

import numpy as np
import pytest
import torch

from torch_utils.ops import upfirdn2d as U

FILTER_4 = [1, 3, 3, 1]


def naive_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """float64 numpy upfirdn2d by the definition: upsample by zero insertion, pad, FIR-filter, keep every down-th pixel."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:  # separable: each pass has gain**0.5 -> overall f (x) f * gain
        f = np.outer(f, f)
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    pad = [padding] * 4 if isinstance(padding, int) else (
        [padding[0], padding[0], padding[1], padding[1]] if len(padding) == 2 else list(padding))
    px0, px1, py0, py1 = pad
    _, _, H, W = x.shape
    fh, fw = f.shape
    kern = f if flip_filter else f[::-1, ::-1]  # correlation taps
    out_h = (H * upy + py0 + py1 - fh + downy) // downy
    out_w = (W * upx + px0 + px1 - fw + downx) // downx

    def taps(out_n, in_n, upn, downn, p0, p1, taps_n):
        o = np.arange(out_n)[:, None]
        i = np.arange(in_n)[None, :]
        t = i * upn + p0 - o * downn
        # an input also has to survive cropping (negative padding) to contribute
        pos = i * upn + p0
        valid = (t >= 0) & (t < taps_n) & (pos >= 0) & (pos < in_n * upn + p0 + p1)
        return np.clip(t, 0, taps_n - 1), valid

    ty, vy = taps(out_h, H, upy, downy, py0, py1, fh)
    tx, vx = taps(out_w, W, upx, downx, px0, px1, fw)
    M = kern[ty[:, None, :, None], tx[None, :, None, :]] * (vy[:, None, :, None] & vx[None, :, None, :])
    return gain * np.einsum('ncij,abij->ncab', x, M)


def _rand_filter(kind, rng):
    if kind == 'fir4':
        return U.setup_filter(FILTER_4)
    if kind == 'rand2d':  # non-square, non-symmetric: catches flips and axis swaps
        return torch.tensor(rng.standard_normal([3, 4]), dtype=torch.float32)
    if kind == 'sep8':
        return U.setup_filter(rng.standard_normal(8) + 1)
    if kind == 'one':
        return U.setup_filter(None)
    raise ValueError(kind)


# (up, down, padding, flip_filter, gain, filter): a spread of the combinations that matter.
CASES = [
    (1, 1, 0, False, 1, 'rand2d'),
    (1, 1, [1, 2, 0, 3], True, 1, 'rand2d'),
    (2, 1, [2, 1, 2, 1], False, 4, 'fir4'),
    (2, 1, [3, 2, 3, 2], False, 4, 'fir4'),
    (1, 2, [1, 1, 1, 1], False, 1, 'fir4'),
    (2, 2, 1, False, 1, 'rand2d'),
    (3, 1, [2, 0], True, 2.5, 'rand2d'),
    (1, 3, [0, 2, 1, 1], False, 1, 'rand2d'),
    ([2, 1], [1, 2], [1, 0, 2, 1], False, 1, 'rand2d'),
    (1, 1, [-1, 2, 1, -1], False, 1, 'rand2d'),
    (2, 2, [-2, 3, 4, -1], True, 1, 'rand2d'),
    (2, 1, [5, 4, 5, 4], False, 4, 'sep8'),
    (1, 2, [3, 3, 3, 3], True, 1, 'sep8'),
    (1, 1, [3, 4, 4, 3], False, 3, 'sep8'),
    (3, 2, 1, False, 1, 'one'),
]


@pytest.mark.parametrize('up,down,padding,flip,gain,fkind', CASES)
def test_ref_matches_naive_formula(up, down, padding, flip, gain, fkind):
    rng = np.random.default_rng(0)
    f = _rand_filter(fkind, rng)
    x = torch.tensor(rng.standard_normal([2, 3, 5, 7]))
    y = U.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl='ref')
    expected = naive_upfirdn2d(x.numpy(), f.numpy(), up, down, padding, flip, gain)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 2e-2), (torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_ref_dtypes(dtype, tol):
    rng = np.random.default_rng(1)
    f = _rand_filter('rand2d', rng)
    x = torch.tensor(rng.standard_normal([1, 2, 6, 5]))
    y = U.upfirdn2d(x.to(dtype), f, up=2, down=1, padding=[2, 1, 2, 1], impl='ref')
    assert y.dtype == dtype
    expected = naive_upfirdn2d(x.numpy(), f.numpy(), 2, 1, [2, 1, 2, 1])
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize('batch', [0, 1])
def test_ref_small_batches(batch):
    f = U.setup_filter(FILTER_4)
    x = torch.randn([batch, 3, 5, 5], dtype=torch.float64)
    y = U.upsample2d(x, f, impl='ref')
    assert y.shape == (batch, 3, 10, 10)
    np.testing.assert_allclose(y.numpy(), naive_upfirdn2d(x.numpy(), f.numpy(), 2, 1, [2, 1, 2, 1], gain=4),
                               atol=1e-12)


@pytest.mark.parametrize('layout', ['strided', 'permuted', 'channels_last'])
def test_ref_non_contiguous_inputs(layout):
    base = torch.randn([2, 3, 10, 7], dtype=torch.float64)
    x = {'strided': base[:, :, ::2, :],
         'permuted': base[:, :, :5, :].transpose(2, 3).contiguous().transpose(2, 3),
         'channels_last': base[:, :, :5].contiguous(memory_format=torch.channels_last)}[layout]
    assert not x.is_contiguous()
    f = U.setup_filter(np.arange(1, 10).reshape(3, 3), normalize=False)
    y = U.upfirdn2d(x, f, up=2, down=1, padding=[1, 2, 0, 1], impl='ref')
    expected = naive_upfirdn2d(x.contiguous().numpy(), f.numpy(), 2, 1, [1, 2, 0, 1])
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-10)


def test_setup_filter_facts():
    f = U.setup_filter(FILTER_4)
    expected = np.outer(FILTER_4, FILTER_4) / 64
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-7)
    assert f.dtype == torch.float32
    # 8+ taps stay separable (the ADA sym6 wavelet has 12); normalisation and gain**(ndim/2).
    long = U.setup_filter(np.arange(1, 13), gain=4)
    assert long.shape == (12,)
    np.testing.assert_allclose(long.sum().item(), 2.0, rtol=1e-6)
    np.testing.assert_allclose(U.setup_filter([1, 2], flip_filter=True, normalize=False).numpy(),
                               [[4, 2], [2, 1]])
    np.testing.assert_allclose(U.setup_filter(None).numpy(), [[1.0]])
    np.testing.assert_allclose(U.setup_filter(5, normalize=False, gain=9).numpy(), [[225.0]])  # 5 -> [5] -> 5*5, x gain


def test_helper_paddings_and_dc_gain():
    f = U.setup_filter(FILTER_4)
    x = torch.randn([1, 2, 6, 8], dtype=torch.float64)
    # The helpers are upfirdn2d with the documented paddings.
    torch.testing.assert_close(U.upsample2d(x, f), U.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4))
    torch.testing.assert_close(U.downsample2d(x, f), U.upfirdn2d(x, f, down=2, padding=1))
    torch.testing.assert_close(U.filter2d(x, f), U.upfirdn2d(x, f, padding=[2, 1, 2, 1]))
    # DC is preserved away from the borders.
    ones = torch.ones([1, 1, 8, 8], dtype=torch.float64)
    for y in (U.upsample2d(ones, f), U.downsample2d(ones, f), U.filter2d(ones, f)):
        inner = y[0, 0, 2:-2, 2:-2]
        torch.testing.assert_close(inner, torch.ones_like(inner))
    assert U.upsample2d(x, f, up=[2, 1]).shape == (1, 2, 6, 16)
    assert U.downsample2d(x, f, down=[1, 2]).shape == (1, 2, 3, 8)


def test_invalid_arguments_raise():
    x = torch.randn([1, 1, 4, 4])
    with pytest.raises(ValueError):
        U.upfirdn2d(x, U.setup_filter([1] * 8, separable=False), padding=-2)  # empty output
    with pytest.raises(ValueError):
        U.upfirdn2d(x[0], None)
    with pytest.raises(ValueError):
        U.upfirdn2d(x, None, up=0)
    with pytest.raises(ValueError):
        U.upfirdn2d(x, None, impl='fast')


@pytest.mark.parametrize('up,down,padding,fkind', [(2, 1, [2, 1, 1, 2], 'rand2d'), (1, 2, [3, 4, 4, 3], 'sep8'),
                                                   (2, 2, [0, 1, -1, 2], 'rand2d')])
def test_ref_gradcheck_and_gradgradcheck(up, down, padding, fkind):
    rng = np.random.default_rng(2)
    f = _rand_filter(fkind, rng).double()
    x = torch.randn([1, 2, 4, 5], dtype=torch.float64, requires_grad=True)
    fn = lambda x: U.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=1.5, impl='ref')  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x])
    assert torch.autograd.gradgradcheck(fn, [x])


def test_cpu_takes_reference_path():
    x = torch.randn([1, 1, 4, 4])
    assert U.which_impl(x) == 'ref'
    assert U.which_impl(x, 'ref') == 'ref'
    with pytest.raises(ValueError):
        U.which_impl(x, 'cuda')


# ----------------------------------------------------------------------------------------------------------
# CUDA kernel against the reference.

GPU_TOL = {torch.float16: dict(rtol=1e-2, atol=1e-2), torch.float32: dict(rtol=1e-5, atol=1e-5),
           torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _gpu_input(shape, dtype, layout):
    if layout == 'channels_last':
        return torch.randn(shape, device='cuda').to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == 'strided':  # a view with row stride 2*W: the kernel must read through the strides
        x = torch.randn([shape[0], shape[1], shape[2] * 2, shape[3]], device='cuda').to(dtype)[:, :, ::2]
        assert not x.is_contiguous()
        return x
    return torch.randn(shape, device='cuda').to(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'strided'])
@pytest.mark.parametrize('up,down,padding,flip,gain,fkind', CASES)
def test_cuda_forward_matches_ref(up, down, padding, flip, gain, fkind, dtype, layout):
    assert U.which_impl(torch.zeros([1], device='cuda'), 'cuda') == 'cuda'
    f = _rand_filter(fkind, np.random.default_rng(3)).cuda()
    x = _gpu_input([3, 5, 9, 7], dtype, layout)
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    y_cuda = U.upfirdn2d(x, f, impl='cuda', **kw)
    y_ref = U.upfirdn2d(x.double(), f, impl='ref', **kw)
    assert y_cuda.dtype == dtype and y_cuda.shape == y_ref.shape
    torch.testing.assert_close(y_cuda.double(), y_ref, **GPU_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
@pytest.mark.parametrize('up,down,padding,flip,gain,fkind', CASES)
def test_cuda_grads_match_ref(up, down, padding, flip, gain, fkind, dtype):
    f = _rand_filter(fkind, np.random.default_rng(4)).cuda()
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    x0 = torch.randn([2, 3, 7, 9], device='cuda')
    results = {}
    for impl in ('cuda', 'ref'):
        x = x0.to(dtype if impl == 'cuda' else torch.float64).requires_grad_(True)
        y = U.upfirdn2d(x, f, impl=impl, **kw)
        dy = torch.linspace(-1, 1, y.numel(), device='cuda').reshape(y.shape).to(y.dtype).requires_grad_(True)
        gx, = torch.autograd.grad(y, x, dy, create_graph=True)
        # Linear op: the second-order path (used by R1) is the derivative of a function of dx w.r.t. dy.
        ggdy, = torch.autograd.grad((gx.double() ** 2).sum(), dy)
        results[impl] = (gx.double(), ggdy.double())
    tol = GPU_TOL[dtype] if dtype == torch.float32 else dict(rtol=3e-2, atol=5e-2)
    torch.testing.assert_close(results['cuda'][0], results['ref'][0], **tol)
    torch.testing.assert_close(results['cuda'][1], results['ref'][1], **tol)


@pytest.mark.gpu
def test_cuda_gradcheck_float64():
    f = U.setup_filter(FILTER_4, device='cuda')
    x = torch.randn([1, 2, 5, 4], device='cuda', dtype=torch.float64, requires_grad=True)
    fn = lambda x: U.upfirdn2d(x, f, up=2, down=2, padding=[2, 1, 0, 3], impl='cuda')  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x])
    assert torch.autograd.gradgradcheck(fn, [x])


@pytest.mark.gpu
@pytest.mark.parametrize('batch', [0, 1])
def test_cuda_small_batches_and_cpu_agreement(batch):
    f = U.setup_filter(FILTER_4)
    x = torch.randn([batch, 4, 11, 13])
    y_cpu = U.downsample2d(x, f)
    y_gpu = U.downsample2d(x.cuda(), f.cuda(), impl='cuda')
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_channels_last_output_layout():
    x = torch.randn([2, 8, 6, 6], device='cuda').contiguous(memory_format=torch.channels_last)
    y = U.upsample2d(x, U.setup_filter(FILTER_4, device='cuda'), impl='cuda')
    assert y.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------------
# The CUDA path's autograd plumbing on CPU: the plugin is replaced by the scatter-form formula above (the
# same index math as the kernel: output o reads input i through tap i*up + pad0 - o*down). This checks the
# separable two-pass split, the gain split, the adjoint padding and double backward without a GPU.

class _FormulaPlugin:
    calls = 0

    @classmethod
    def upfirdn2d(cls, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        assert f.dtype == torch.float32 and f.ndim == 2 and f.is_contiguous()
        cls.calls += 1
        y = naive_upfirdn2d(x.detach().double().numpy(), f.numpy(), [upx, upy], [downx, downy],
                            [px0, px1, py0, py1], flip, gain)
        return torch.tensor(y, dtype=x.dtype)


@pytest.mark.parametrize('up,down,padding,flip,gain,fkind', [CASES[3], CASES[5], CASES[10], CASES[11], CASES[12]])
def test_cuda_function_plumbing_with_formula_plugin(monkeypatch, up, down, padding, flip, gain, fkind):
    monkeypatch.setattr(U, '_load_plugin', lambda required: _FormulaPlugin)
    f = _rand_filter(fkind, np.random.default_rng(5))
    args = (U._parse_scaling(up), U._parse_scaling(down), U._parse_padding(padding), flip, float(gain))
    x0 = torch.randn([1, 2, 5, 6], dtype=torch.float64)
    grads = {}
    for name, fn in [('cuda', lambda x: U._upfirdn2d_cuda(*args).apply(x, f)),
                     ('ref', lambda x: U._upfirdn2d_ref(x, f, *args))]:
        x = x0.clone().requires_grad_(True)
        y = fn(x)
        # The op is linear, so dx depends on dy only: second order is the derivative w.r.t. dy (as in R1).
        dy = torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape).requires_grad_(True)
        gx, = torch.autograd.grad(y, x, dy, create_graph=True)
        ggdy, = torch.autograd.grad((gx * torch.sin(gx)).sum(), dy)
        grads[name] = (y.detach(), gx.detach(), ggdy)
    for a, b in zip(grads['cuda'], grads['ref']):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert _FormulaPlugin.calls > 0


# The tiled kernels' cases: (up, down, padding, filter taps, separable), as the networks and ADA call them.
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]
TILED_CASES = [
    (1, 1, [2, 1, 2, 1], FILTER_4),     # FIR around the resampling convolutions
    (1, 1, [-1, 2, 1, -2], FILTER_4),   # cropping
    (2, 1, [2, 1, 2, 1], FILTER_4),     # upsample2d
    (2, 1, [3, 2, 3, 2], FILTER_4),
    (1, 2, [1, 1, 1, 1], FILTER_4),     # downsample2d
    (1, 2, [0, 3, 2, 1], FILTER_4),
    (2, 1, [6, 5, 6, 5], SYM6),         # ADA's 12-tap upsampling (row + column pass)
    (1, 2, [-1, 4, 5, -1], SYM6),       # ADA's 12-tap downsampling with a crop
]


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize('flip', [False, True])
@pytest.mark.parametrize('up,down,padding,taps', TILED_CASES)
def test_cuda_tiled_cases_match_ref_and_the_generic_kernel(up, down, padding, taps, flip, dtype):
    """Tile edges (sizes not multiples of 32, several tiles), odd channel counts; the channels_last input
    runs the generic kernel, which must give the very same sums."""
    f = U.setup_filter(taps, device='cuda')
    g = torch.Generator().manual_seed(7)
    x = torch.randn([2, 5, 45, 70], generator=g).to(device='cuda', dtype=dtype)
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=up * up)
    y = U.upfirdn2d(x, f, impl='cuda', **kw)
    y_ref = U.upfirdn2d(x.double(), f, impl='ref', **kw)
    torch.testing.assert_close(y.double(), y_ref, **GPU_TOL[dtype])
    y_generic = U.upfirdn2d(x.contiguous(memory_format=torch.channels_last), f, impl='cuda', **kw)
    assert torch.equal(y, y_generic.contiguous())


@pytest.mark.gpu
def test_cuda_tiled_kernel_loops_over_more_planes_than_the_grid_holds():
    f = U.setup_filter(FILTER_4, device='cuda')
    x = torch.randn([2, 33000, 3, 2], device='cuda')  # 66000 planes > 65535 grid blocks in z
    y = U.upsample2d(x, f, impl='cuda')
    torch.testing.assert_close(y, U.upsample2d(x, f, impl='ref'), rtol=1e-5, atol=1e-5)
