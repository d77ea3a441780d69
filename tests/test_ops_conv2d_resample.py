"""conv2d_resample against an explicit step-by-step composition, the documented StyleGAN equivalences,
and gradients. Every fast path (1x1 up/down, strided down, transposed up, plain, fallback) is exercised."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_resample as R
from torch_utils.ops import upfirdn2d as U


def _pad_or_crop(x, x0, x1, y0, y1):
    """Zero-pad (positive) or crop (negative) the last two axes, by explicit index copying."""
    N, C, H, W = x.shape
    out = x.new_zeros([N, C, H + y0 + y1, W + x0 + x1])
    for i in range(H):
        for j in range(W):
            oi, oj = i + y0, j + x0
            if 0 <= oi < out.shape[2] and 0 <= oj < out.shape[3]:
                out[:, :, oi, oj] = x[:, :, i, j]
    return out


def _fir(x, f2d, gain, flip_filter):
    """Valid depthwise FIR: true convolution with f (correlation if flip_filter), times gain."""
    k = f2d if flip_filter else f2d.flip([0, 1])
    C = x.shape[1]
    return F.conv2d(x, (k * gain)[None, None].repeat(C, 1, 1, 1).to(x.dtype), groups=C)


def naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """zero-insert -> pad -> FIR (gain up^2) -> conv -> FIR -> decimate, written out step by step."""
    f2d = torch.ones([1, 1], dtype=torch.float64) if f is None else f.double()
    if f2d.ndim == 1:
        f2d = torch.outer(f2d, f2d)
    fh, fw = f2d.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        px0, px1, py0, py1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    N, C, H, W = x.shape
    u = x.new_zeros([N, C, H * up, W * up])
    u[:, :, ::up, ::up] = x
    u = _pad_or_crop(u, px0, px1, py0, py1)
    if up > 1:
        u = _fir(u, f2d, up ** 2, flip_filter)
    u = F.conv2d(u, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        u = _fir(u, f2d, 1, flip_filter)[:, :, ::down, ::down]
    return u


PADDINGS = [0, 1, (1, 0, 2, 1)]
CASES = [(up, down, k, groups, flip_w, pad)
         for up, down, k, groups, flip_w, pad in itertools.product([1, 2], [1, 2], [1, 3], [1, 2], [True, False],
                                                                   range(len(PADDINGS)))
         if not (k == 1 and pad == 2 and (up > 1 or down > 1))]  # keep the list short: ~90 cases


@pytest.mark.parametrize('up,down,k,groups,flip_weight,pad_idx', CASES)
def test_matches_explicit_composition(up, down, k, groups, flip_weight, pad_idx):
    g = torch.Generator().manual_seed(hash((up, down, k, groups, flip_weight, pad_idx)) % 1000)
    x = torch.randn([2, 4, 5, 6], dtype=torch.float64, generator=g)
    w = torch.randn([6, 4 // groups, k, k], dtype=torch.float64, generator=g)
    f = torch.tensor([[1.0, 2.0, 1.0], [3.0, 0.5, 0.0]], dtype=torch.float32)  # non-symmetric 2x3 taps
    flip_filter = bool(pad_idx % 2)
    padding = PADDINGS[pad_idx]
    pad4 = U._parse_padding(padding)
    y = R.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                          flip_weight=flip_weight, flip_filter=flip_filter)
    expected = naive_conv2d_resample(x, w, f, up, down, pad4, groups, flip_weight, flip_filter)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('padding', [(0, 1, 1, 0), (-1, -1, 0, 0), (2, 2, 1, 1)])
def test_plain_and_fallback_paths(padding):
    x = torch.randn([1, 3, 6, 5], dtype=torch.float64)
    w = torch.randn([2, 3, 3, 3], dtype=torch.float64)
    y = R.conv2d_resample(x, w, padding=padding)
    torch.testing.assert_close(y, naive_conv2d_resample(x, w, None, 1, 1, padding, 1, True, False))


def test_documented_up2_equivalence():
    """Fact sheet 4.3: the up=2 synthesis conv is upfirdn2d(up=2, pad [3,2,3,2], gain 4) + conv with flipped w."""
    f = U.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 5, 4, 4], dtype=torch.float64)
    w = torch.randn([7, 5, 3, 3], dtype=torch.float64)
    y = R.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)
    expected = F.conv2d(U.upfirdn2d(x, f, up=2, padding=[3, 2, 3, 2], gain=4), w.flip([2, 3]))
    assert y.shape == (2, 7, 8, 8)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_documented_down2_equivalences():
    """Fact sheet 4.3: 3x3 down = pad 2 + FIR + stride-2 correlation; 1x1 down = FIR-downsample (pad 1) + conv."""
    f = U.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 4, 8, 8], dtype=torch.float64)
    w3 = torch.randn([6, 4, 3, 3], dtype=torch.float64)
    y = R.conv2d_resample(x, w3, f=f, down=2, padding=1)
    torch.testing.assert_close(y, F.conv2d(U.upfirdn2d(x, f, padding=2), w3, stride=2))
    assert y.shape == (2, 6, 4, 4)
    w1 = torch.randn([6, 4, 1, 1], dtype=torch.float64)
    y1 = R.conv2d_resample(x, w1, f=f, down=2)
    torch.testing.assert_close(y1, F.conv2d(U.upfirdn2d(x, f, down=2, padding=1), w1))


def test_up_and_down_together_and_dtypes():
    f = U.setup_filter([1, 3, 3, 1])
    x = torch.randn([1, 2, 5, 5], dtype=torch.float64)
    w = torch.randn([3, 2, 3, 3], dtype=torch.float64)
    y = R.conv2d_resample(x, w, f=f, up=2, down=2, padding=1)
    torch.testing.assert_close(y, naive_conv2d_resample(x, w, f, 2, 2, (1, 1, 1, 1), 1, True, False))
    y32 = R.conv2d_resample(x.float(), w.float(), f=f, up=2, padding=1, flip_weight=False)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), R.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('up,down,k', [(2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1)])
def test_gradcheck_and_gradgradcheck(up, down, k):
    f = U.setup_filter([1, 3, 3, 1])
    x = torch.randn([1, 2, 4, 4], dtype=torch.float64, requires_grad=True)
    w = torch.randn([2, 2, k, k], dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: R.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2,  # noqa: E731
                                        flip_weight=(up == 1))
    assert torch.autograd.gradcheck(fn, [x, w])
    assert torch.autograd.gradgradcheck(fn, [x, w])


def test_invalid_arguments_raise():
    x = torch.randn([1, 4, 4, 4])
    with pytest.raises(ValueError):
        R.conv2d_resample(x, torch.randn([2, 3, 3, 3]))            # channel mismatch
    with pytest.raises(ValueError):
        R.conv2d_resample(x, torch.randn([2, 4, 3, 3]).double())   # dtype mismatch
    with pytest.raises(ValueError):
        R.conv2d_resample(x, torch.randn([2, 4, 3, 3]), up=0)


@pytest.mark.gpu
@pytest.mark.parametrize('up,down,k', [(2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1), (1, 1, 3)])
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
def test_cuda_matches_cpu_reference(up, down, k, dtype):
    f = U.setup_filter([1, 3, 3, 1])
    x = torch.randn([2, 8, 8, 8], dtype=torch.float64)
    w = torch.randn([4, 8, k, k], dtype=torch.float64) / np.sqrt(8 * k * k)
    kw = dict(up=up, down=down, padding=k // 2, flip_weight=(up == 1))
    y_gpu = R.conv2d_resample(x.cuda().to(dtype).contiguous(memory_format=torch.channels_last), w.cuda().to(dtype),
                              f=f.cuda(), **kw)
    y_cpu = R.conv2d_resample(x, w, f=f, **kw)
    tol = dict(rtol=1e-2, atol=2e-2) if dtype == torch.float16 else dict(rtol=1e-3, atol=1e-3)  # TF32 convs
    torch.testing.assert_close(y_gpu.double().cpu(), y_cpu, **tol)
