"""AugmentPipe (ADA): identities, closed-form transforms, gating, double backward, ADA rule."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from training import augment
from training.augment import AugmentPipe, augpipe_specs

ALL_TRANSFORMS = ['xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac', 'brightness', 'contrast',
                  'lumaflip', 'hue', 'saturation', 'imgfilter', 'noise', 'cutout']


def _images(n=2, c=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, c, h, w], generator=g) * 2 - 1


def _smooth_images(n=2, c=3, size=32, seed=0):
    """Band-limited images: the resampling chain is accurate on these."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand([n, c, 4, 4], generator=g) * 2 - 1
    return F.interpolate(low, size=[size, size], mode='bilinear', align_corners=False)


def _ppf(q):
    """Standard normal quantile, from scipy (independent of the pipe's erfinv)."""
    return float(scipy.stats.norm.ppf(q))

# ---------------------------------------------------------------------------------------------
# Wavelets, buffers, presets.


@pytest.mark.parametrize('name,vanishing', [('sym2', 2), ('sym6', 6)])
def test_wavelet_constants_are_orthonormal_with_vanishing_moments(name, vanishing):
    h = np.asarray(augment.wavelets[name])
    n = np.arange(h.size)
    assert h.sum() == pytest.approx(np.sqrt(2), abs=1e-12)
    for k in range(h.size // 2):  # orthonormal to its own even shifts
        assert np.dot(h[:h.size - 2 * k], h[2 * k:]) == pytest.approx(1.0 if k == 0 else 0.0, abs=1e-10)
    g = h * (-1.0) ** n
    for m in range(vanishing):  # the high-pass kills polynomials up to degree vanishing-1
        assert abs(np.dot(g, n.astype(np.float64) ** m)) < 1e-8 * max(1, h.size ** m)


def test_buffers():
    pipe = AugmentPipe()
    assert set(pipe.state_dict()) == {'p', 'Hz_geom', 'Hz_fbank'}
    assert pipe.p.shape == () and float(pipe.p) == 1.0
    assert pipe.Hz_geom.shape == (12,)
    assert float(pipe.Hz_geom.sum()) == pytest.approx(1.0, abs=1e-6)
    expected = torch.tensor(augment.SYM6) / sum(augment.SYM6)
    assert torch.allclose(pipe.Hz_geom, expected.float(), atol=1e-7)


def test_filter_bank_structure():
    bank = AugmentPipe().Hz_fbank.double()
    assert bank.shape == (4, 43)
    # Band 0 carries the DC gain, the detail bands have none.
    assert torch.allclose(bank.sum(dim=1), torch.tensor([1.0, 0, 0, 0], dtype=bank.dtype), atol=1e-6)
    # All bands together: a centred unit impulse (identity filter).
    delta = torch.zeros(43, dtype=bank.dtype)
    delta[21] = 1
    assert torch.allclose(bank.sum(dim=0), delta, atol=1e-6)
    # Every band is a symmetric (zero-phase) filter.
    assert torch.allclose(bank, bank.flip(1), atol=1e-6)
    # Finest band = half-band high-pass of sym2 centred at tap 21: 1/2 at the centre and, by
    # orthogonality of sym2, zero at even lags; only lags 0, +-1, +-3 survive.
    nonzero = torch.nonzero(bank[3].abs() > 1e-9).flatten().tolist()
    assert nonzero == [18, 20, 21, 22, 24]
    assert float(bank[3, 21]) == pytest.approx(0.5, abs=1e-7)
    assert (bank[2].abs() > 1e-9).sum() > len(nonzero)  # coarser bands are wider


def test_augpipe_specs_table():
    blit, geom = {'xflip', 'rotate90', 'xint'}, {'scale', 'rotate', 'aniso', 'xfrac'}
    color = {'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'}
    expected = {
        'blit': blit, 'geom': geom, 'color': color, 'filter': {'imgfilter'}, 'noise': {'noise'},
        'cutout': {'cutout'}, 'bg': blit | geom, 'bgc': blit | geom | color,
        'bgcf': blit | geom | color | {'imgfilter'}, 'bgcfn': blit | geom | color | {'imgfilter', 'noise'},
        'bgcfnc': set(ALL_TRANSFORMS),
    }
    assert set(augpipe_specs) == set(expected)
    for name, spec in augpipe_specs.items():
        assert spec == {t: 1 for t in expected[name]}, name
        AugmentPipe(**spec)  # every preset constructs

# ---------------------------------------------------------------------------------------------
# Identity and exact blits.


@pytest.mark.parametrize('preset', sorted(augpipe_specs))
def test_p_zero_is_identity(preset, device):
    pipe = AugmentPipe(**augpipe_specs[preset]).to(device)
    pipe.p.zero_()
    x = _images(h=32, w=32).to(device)
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().max() < 1e-4


def test_xflip_is_exact():
    x = _images(h=16, w=20)
    pipe = AugmentPipe(xflip=1)
    assert torch.equal(pipe(x, debug_percentile=0.75), x.flip(3))
    assert torch.equal(pipe(x, debug_percentile=0.25), x)


@pytest.mark.parametrize('k', [0, 1, 2, 3])
def test_rotate90_matches_torch_rot90(k):
    x = _images(h=16, w=16)
    y = AugmentPipe(rotate90=1)(x, debug_percentile=(k + 0.5) / 4)
    assert torch.equal(y, torch.rot90(x, k, dims=(2, 3)))


def test_xint_shifts_pixels_with_reflected_border():
    x = _images(h=16, w=24)
    # q = 0.75 -> t = 0.5 * xint_max = 0.125 -> shift by (0.125 * 24, 0.125 * 16) = (3, 2) pixels.
    y = AugmentPipe(xint=1, xint_max=0.25)(x, debug_percentile=0.75)
    assert torch.equal(y[:, :, 2:, 3:], x[:, :, :-2, :-3])
    assert torch.equal(y[:, :, 2:, 0], x[:, :, :-2, 3])   # column -3 reflects to column 3
    assert torch.equal(y[:, :, 0, 3:], x[:, :, 2, :-3])   # row -2 reflects to row 2


def test_general_rotation_by_pi_matches_flip_on_smooth_images():
    # q = 0.75 gives theta = pi/2 for both the pre- and the post-rotation: a half turn in total.
    x = _smooth_images()
    y = AugmentPipe(rotate=1)(x, debug_percentile=0.75)
    assert (y - x.flip(2, 3)).abs().max() < 0.05


def test_scale_debug_median_is_identity_and_zoom_changes_image():
    x = _smooth_images()
    pipe = AugmentPipe(scale=1, aniso=1, xfrac=1)
    assert (pipe(x, debug_percentile=0.5) - x).abs().max() < 1e-4    # median: s = 1, t = 0
    zoomed = AugmentPipe(scale=1, scale_std=1)(x, debug_percentile=_cdf(1.0))  # s = 2
    # Zooming in by 2 about the centre: output pixel (i, j) samples input at the half-way point.
    centre = x[:, :, 8:24, 8:24]
    ref = F.interpolate(centre, scale_factor=2, mode='bilinear', align_corners=False)
    assert (zoomed - ref)[:, :, 4:-4, 4:-4].abs().max() < 0.05


def _cdf(z):
    return float(scipy.stats.norm.cdf(z))

# ---------------------------------------------------------------------------------------------
# Colour.


def test_brightness_adds_constant():
    x = _images()
    q = 0.8
    y = AugmentPipe(brightness=1, brightness_std=0.2)(x, debug_percentile=q)
    assert torch.allclose(y, x + 0.2 * _ppf(q), atol=1e-5)


def test_contrast_scales():
    x = _images()
    q = 0.3
    y = AugmentPipe(contrast=1, contrast_std=0.5)(x, debug_percentile=q)
    assert torch.allclose(y, x * 2 ** (0.5 * _ppf(q)), atol=1e-5)


def test_lumaflip_reflects_luma_and_is_involution():
    x = _images()
    pipe = AugmentPipe(lumaflip=1)
    y = pipe(x, debug_percentile=0.75)
    assert torch.allclose(y, x - 2 * x.mean(dim=1, keepdim=True), atol=1e-5)
    assert torch.allclose(pipe(y, debug_percentile=0.75), x, atol=1e-5)


def test_hue_rotation_keeps_luma_and_third_turn_permutes_channels():
    x = _images()
    pipe = AugmentPipe(hue=1)
    y = pipe(x, debug_percentile=0.6)
    assert torch.allclose(y.mean(dim=1), x.mean(dim=1), atol=1e-5)
    chroma = lambda t: (t - t.mean(dim=1, keepdim=True)).norm(dim=1)
    assert torch.allclose(chroma(y), chroma(x), atol=1e-5)
    # theta = 2*pi/3 about the grey axis maps r -> g -> b -> r.
    third = pipe(x, debug_percentile=(1 + 2 / 3) / 2)
    assert torch.allclose(third, x.roll(1, dims=1), atol=1e-5)


def test_saturation_zero_gives_grayscale():
    x = _images()
    y = AugmentPipe(saturation=1, saturation_std=50)(x, debug_percentile=0.01)  # s = 2^(-116)
    assert torch.allclose(y, x.mean(dim=1, keepdim=True).expand_as(x), atol=1e-5)
    assert torch.allclose(AugmentPipe(saturation=1)(x, debug_percentile=0.5), x, atol=1e-6)


@pytest.mark.parametrize('preset', ['color', 'bgcfnc'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_colour_keeps_shape_and_dtype(preset, dtype):
    x = _images(c=3).to(dtype)
    y = AugmentPipe(**augpipe_specs[preset])(x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()


def test_grayscale_uses_mean_of_rgb_rows():
    x = _images(c=1)
    q = 0.7
    pipe = AugmentPipe(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    y = pipe(x, debug_percentile=q)
    assert y.shape == x.shape
    # Hue and saturation are skipped for C == 1; the rest acts on grey as on (g, g, g):
    # brightness, then contrast, then the luma flip negates.
    b, c = 0.2 * _ppf(q), 2 ** (0.5 * _ppf(q))
    assert torch.allclose(y, -(x + b) * c, atol=1e-5)


def test_bad_channel_count_raises():
    with pytest.raises(ValueError, match='1 or 3'):
        AugmentPipe(brightness=1)(_images(c=2))
    AugmentPipe(xflip=1)(_images(c=2))  # geometry alone works for any channel count

# ---------------------------------------------------------------------------------------------
# Image-space filter and corruptions.


def test_imgfilter_median_is_identity_and_dc_gain_closed_form():
    x = _images(h=32, w=32)
    pipe = AugmentPipe(imgfilter=1)
    assert torch.allclose(pipe(x, debug_percentile=0.5), x, atol=1e-5)
    # Constant image: only band 0 passes. Every band gets gain t; each band's gain vector is
    # normalised by sqrt(1 + E_b (t^2 - 1)) with expected power E = [10, 1, 1, 1] / 13.
    q = 0.9
    t = 2 ** _ppf(q)
    norms = [math.sqrt(1 + e * (t * t - 1)) for e in [10 / 13, 1 / 13, 1 / 13, 1 / 13]]
    gain0 = t / np.prod(norms)
    const = torch.full([1, 3, 32, 32], 0.5)
    # The filter runs along x and then along y, so the DC gain applies twice.
    assert torch.allclose(pipe(const, debug_percentile=q), const * gain0 ** 2, atol=1e-5)


def test_imgfilter_on_image_smaller_than_filter():
    x = _images(h=8, w=8)
    y = AugmentPipe(imgfilter=1)(x, debug_percentile=0.5)
    assert torch.allclose(y, x, atol=1e-5)


def test_noise_std_matches_sigma():
    x = torch.zeros([1, 3, 64, 64])
    q = 0.9
    y = AugmentPipe(noise=1, noise_std=0.1)(x, debug_percentile=q)
    sigma = abs(_ppf(q)) * 0.1
    assert float(y.std()) == pytest.approx(sigma, rel=0.05)


def test_cutout_square():
    x = torch.ones([1, 1, 16, 16])
    y = AugmentPipe(cutout=1, cutout_size=0.5)(x, debug_percentile=0.5)  # centre (0.5, 0.5)
    expected = torch.ones([16, 16])
    expected[4:12, 4:12] = 0   # (k + 0.5) / 16 within 0.25 of 0.5  <=>  k in 4..11
    assert torch.equal(y[0, 0], expected)

# ---------------------------------------------------------------------------------------------
# Randomness: gating, independence, determinism.


def test_gate_rate_follows_multiplier_times_p():
    torch.manual_seed(0)
    n = 4000
    pipe = AugmentPipe(brightness=0.5)
    pipe.p.fill_(0.8)
    y = pipe(torch.zeros([n, 3, 1, 1]))
    rate = float((y.abs().amax(dim=[1, 2, 3]) > 0).float().mean())
    assert rate == pytest.approx(0.4, abs=0.03)


def test_rotation_gate_rule():
    # P(pre or post rotation) = rotate * p, with each gate at 1 - sqrt(1 - rotate * p).
    torch.manual_seed(0)
    n = 20000
    pipe = AugmentPipe(rotate=1)
    pipe.p.fill_(0.5)
    G_inv = pipe._geometric_matrix(augment._Draws(n, torch.device('cpu')), 16, 16)
    rotated = (G_inv - torch.eye(3)).abs().amax(dim=[1, 2]) > 1e-6
    assert float(rotated.float().mean()) == pytest.approx(0.5, abs=0.015)


def test_per_sample_independence():
    pipe = AugmentPipe(**augpipe_specs['bgc'])
    a, b, b2 = _smooth_images(n=3).unbind(0)
    torch.manual_seed(1)
    y1 = pipe(torch.stack([a, b]))
    torch.manual_seed(1)
    y2 = pipe(torch.stack([a, b2]))
    assert torch.allclose(y1[0], y2[0], atol=1e-5)       # a's output ignores its neighbour
    # Identical inputs in one batch receive different augmentations.
    torch.manual_seed(2)
    twin = pipe(torch.stack([a, a]))
    assert (twin[0] - twin[1]).abs().max() > 1e-2


def test_deterministic_under_seed():
    pipe = AugmentPipe(**augpipe_specs['bgcfnc'])
    x = _images(n=4, h=32, w=32)
    torch.manual_seed(123)
    y1 = pipe(x)
    torch.manual_seed(123)
    y2 = pipe(x)
    torch.manual_seed(124)
    y3 = pipe(x)
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)

# ---------------------------------------------------------------------------------------------
# Differentiability (R1 is taken through the pipe).


def test_r1_style_double_backward_through_pipe():
    torch.manual_seed(0)
    pipe = AugmentPipe(**augpipe_specs['bgcfnc'])
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = _images(n=2, h=16, w=16).requires_grad_(True)
    logits = torch.tanh(conv(pipe(x))).sum(dim=[1, 2, 3])
    grads, = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grads.square().sum()
    penalty.backward()
    assert conv.weight.grad is not None
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


def test_gradcheck_and_gradgradcheck_in_float64():
    pipe = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1,
                       contrast=1, lumaflip=1, imgfilter=1, cutout=1, cutout_size=0.25)
    x = _images(n=1, c=1, h=4, w=4).double().requires_grad_(True)
    # A fixed percentile makes the pipe deterministic; the square makes the second derivative non-trivial.
    fn = lambda t: pipe(t, debug_percentile=0.3).square()
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5)

# ---------------------------------------------------------------------------------------------
# Persistence.


def test_augment_pipe_is_persistent():
    from torch_utils import persistence
    assert persistence.is_persistent(AugmentPipe)
    assert persistence.registry['AugmentPipe'] is AugmentPipe
    pipe = AugmentPipe(xflip=1, imgfilter_bands=[1, 0, 1, 0])
    assert pipe.init_kwargs['imgfilter_bands'] == [1, 0, 1, 0]


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = _images(n=2, h=32, w=32)
    pipe = AugmentPipe(**augpipe_specs['bgcf'])
    y_cpu = pipe(x, debug_percentile=0.3)
    y_gpu = pipe.cuda()(x.cuda(), debug_percentile=0.3)
    assert torch.allclose(y_gpu.cpu(), y_cpu, atol=1e-4)
