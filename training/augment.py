"""Adaptive discriminator augmentation (ADA): the augmentation pipeline and the p controller.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", section 2.3
and appendix B. Every image the discriminator sees goes through `AugmentPipe`; each transform is
applied to each sample independently with probability (its multiplier) * p, and p is steered by
training/ada.py's controller from the sign of D's outputs on reals.

The pipeline is twice differentiable (grid_sample_gradfix, reflect padding, grouped convolutions),
so R1 can be taken through it. It is also lean on an accelerator: every constant tensor is built once
per device and cached, so a call issues no host->device copy, and it reads one thing back to the
host: the four integers of the geometric step's reflect padding, fitted to the batch's transforms as
upstream does (one small transfer and stream sync per call; a padding that covers every possible draw
would cost 3-4x the time and 4-5x the memory). tests/test_augment_counters.py counts all of these.

This module's source is stored in every snapshot and NVIDIA's loader executes it, so it imports only
modules their tree also has (torch_utils.misc, persistence, ops.upfirdn2d, ops.grid_sample_gradfix)
and calls only functions those provide, with their signatures.
"""

import statistics

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc
from torch_utils import persistence
from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops import upfirdn2d

# ---------------------------------------------------------------------------------------------
# Wavelet low-pass (decomposition) filters: published constants (Daubechies' least-asymmetric
# "symlets"). Only sym2 (image-space filter bank) and sym6 (geometric resampling) are used.

SYM2 = [
    -0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025,
]
SYM6 = [
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
]
wavelets = {'sym2': SYM2, 'sym6': SYM6}

# ---------------------------------------------------------------------------------------------
# --augpipe presets (the same table as upstream): every listed transform gets probability multiplier 1.

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
_FILTER = dict(imgfilter=1)
_NOISE = dict(noise=1)
_CUTOUT = dict(cutout=1)

augpipe_specs = {
    'blit':   dict(**_BLIT),
    'geom':   dict(**_GEOM),
    'color':  dict(**_COLOR),
    'filter': dict(**_FILTER),
    'noise':  dict(**_NOISE),
    'cutout': dict(**_CUTOUT),
    'bg':     dict(**_BLIT, **_GEOM),
    'bgc':    dict(**_BLIT, **_GEOM, **_COLOR),
    'bgcf':   dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER),
    'bgcfn':  dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE),
    'bgcfnc': dict(**_BLIT, **_GEOM, **_COLOR, **_FILTER, **_NOISE, **_CUTOUT),
}

# ---------------------------------------------------------------------------------------------
# Constants, cached per device. Building a constant per call costs a host->device copy (and a
# stream sync) on CUDA for every entry; these are built once and must never be modified in place.

_const_cache = dict()


def _cached(key, device, build):
    """The tensor `build(device)` made on first use of (key, device), then reused."""
    full_key = (key, str(device))
    value = _const_cache.get(full_key)
    if value is None:
        # Normal tensors even when the first call runs under inference_mode/no_grad: they are
        # reused later in autograd graphs, where inference tensors are refused.
        with torch.inference_mode(False), torch.no_grad():
            value = build(torch.device(device))
        _const_cache[full_key] = value
    return value


def _filled(value, n, device):
    """Cached float32 [n] tensor holding `value` (same float32 rounding as torch.as_tensor)."""
    return _cached(('filled', float(value), n), device,
                   lambda dev: torch.full([n], float(value), dtype=torch.float32, device=dev))


def _eye(size, device):
    return _cached(('eye', size), device, lambda dev: torch.eye(size, device=dev))


def _luma_constants(device):
    """(vv, I - vv - e3 e3^T, e3 e3^T) for the luma axis v = [1, 1, 1, 0] / sqrt(3), as [4, 4]."""
    def build(dev):
        v = torch.tensor([1, 1, 1, 0], dtype=torch.float32, device=dev) / np.sqrt(3)
        vv = torch.outer(v, v)
        e33 = torch.diag(torch.eye(4, device=dev)[3])
        return vv, torch.eye(4, device=dev) - vv - e33, e33
    return _cached('luma', device, build)


_LUMA_AXIS = [float(np.float32(1 / np.sqrt(3)))] * 3  # v[:3] above, as the float32 values

# ---------------------------------------------------------------------------------------------
# Batched homogeneous matrices. Elements may be Python numbers or tensors of shape [N].


def _batched_matrix(rows, batch_size, device):
    """Stack a nested list of numbers/[N] tensors into a [N, R, C] float32 tensor (no host copies)."""
    flat = [e if isinstance(e, torch.Tensor) else _filled(e, batch_size, device) for row in rows for e in row]
    return torch.stack(flat, dim=-1).reshape(batch_size, len(rows), len(rows[0]))


def _translate2d(tx, ty, n, dev):
    return _batched_matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, dev)


def _scale2d(sx, sy, n, dev):
    return _batched_matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, dev)


def _rotate2d(theta, n, dev):
    c, s = torch.cos(theta), torch.sin(theta)
    return _batched_matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, dev)


def _translate3d(tx, ty, tz, n, dev):
    return _batched_matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], n, dev)


def _scale3d(sx, sy, sz, n, dev):
    return _batched_matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], n, dev)


def _rotate3d(axis, theta, n, dev):
    """Rotation by theta about the unit 3-vector `axis` (Rodrigues' formula), homogeneous 4x4."""
    vx, vy, vz = (float(a) for a in axis)
    c, s = torch.cos(theta), torch.sin(theta)
    d = 1 - c
    return _batched_matrix([
        [vx * vx * d + c,      vx * vy * d - vz * s, vx * vz * d + vy * s, 0],
        [vy * vx * d + vz * s, vy * vy * d + c,      vy * vz * d - vx * s, 0],
        [vz * vx * d - vy * s, vz * vy * d + vx * s, vz * vz * d + c,      0],
        [0, 0, 0, 1],
    ], n, dev)

# ---------------------------------------------------------------------------------------------
# Filters.


def _build_filter_bank(lowpass, num_bands=4):
    """Image-space filter bank from an orthogonal wavelet (the ADA paper's appendix B).

    Row 0 is the coarsest low-pass band and row num_bands-1 the finest high-pass band. Because
    the half-band pair satisfies h2 + g2 = delta (power complementarity of an orthogonal wavelet),
    the rows sum to a centred unit impulse: with every band gain 1 the filter is the identity.

    Args:
        lowpass: wavelet low-pass decomposition filter (1-D).
        num_bands: number of bands.

    Returns:
        numpy float64 array [num_bands, taps].
    """
    h = np.asarray(lowpass, dtype=np.float64)
    g = h * ((-1.0) ** np.arange(h.size))                 # quadrature-mirror high-pass
    h2 = np.convolve(h, h[::-1]) / 2                        # half-band low-pass (autocorrelation)
    g2 = np.convolve(g, g[::-1]) / 2                        # half-band high-pass
    bank = np.eye(num_bands, 1)                             # [bands, 1]: all power in band 0
    for band in range(1, num_bands):
        upsampled = np.zeros([num_bands, bank.shape[1] * 2 - 1])
        upsampled[:, ::2] = bank                            # zero-interleave, no trailing zero
        bank = np.stack([np.convolve(row, h2) for row in upsampled])
        start = (bank.shape[1] - g2.size) // 2
        bank[band, start:start + g2.size] += g2             # new finest band, centred
    return bank


def _filter_lag(f):
    """Low-frequency delay of a 2x upsampler with filter f, in input pixels (f's centre of mass).

    Args:
        f: 1-D filter taps.

    Returns:
        float; negative when the mass sits left of the middle tap.
    """
    f = np.asarray(f, dtype=np.float64)
    centre = float((np.arange(f.size) * f).sum() / f.sum())
    return (centre - (f.size - 1) / 2) / 2


def _reflect_pad(x, pad):
    """Reflect-pad the last two dims by pad = [left, right, top, bottom] (twice differentiable).

    Uses F.pad when every pad is smaller than its dimension; otherwise mirrors repeatedly via an
    index gather, so tiny images also work.
    """
    left, right, top, bottom = pad
    H, W = x.shape[-2:]
    if max(left, right) < W and max(top, bottom) < H:
        return F.pad(x, [left, right, top, bottom], mode='reflect')
    x = x.index_select(-1, _mirror_index(torch.arange(-left, W + right, device=x.device), W))
    return x.index_select(-2, _mirror_index(torch.arange(-top, H + bottom, device=x.device), H))


def _mirror_index(idx, size):
    """Map integer indices outside [0, size) back inside by reflection about the edge pixels."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx < size, idx, period - idx)

# ---------------------------------------------------------------------------------------------
# Per-size constants of the transforms (cached per device).


def _blit_coords(W, H, device):
    """[3, H*W] homogeneous pixel coordinates relative to the image centre."""
    def build(dev):
        ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32),
                                torch.arange(W, device=dev, dtype=torch.float32), indexing='ij')
        return torch.stack([xs.flatten() - (W - 1) / 2, ys.flatten() - (H - 1) / 2,
                            torch.ones([H * W], device=dev)])
    return _cached(('blit', W, H), device, build)


def _full_padding(W, H):
    """One full reflection on every side: the most any draw can use (samples beyond it read zeros)."""
    return [W - 1, W - 1, H - 1, H - 1]


def _canvas_corners(W, H, border, device):
    """[3, 4] the canvas's four outermost sample centres, normalised canvas coordinates, homogeneous.

    The canvas is the image plus `border` pixels per side at 2x: Wc x Hc samples whose centres
    (align_corners=False) lie within +-(1 - 1/Wc) and +-(1 - 1/Hc).
    """
    def build(dev):
        u, v = 1 - 1 / (2 * W + 4 * border), 1 - 1 / (2 * H + 4 * border)
        return torch.tensor([[-u, u, u, -u], [-v, -v, v, v], [1, 1, 1, 1]], dtype=torch.float32, device=dev)
    return _cached(('corners', W, H, border), device, build)


# How far beyond a sample position the padded input must reach, in input pixels: bilinear reads
# 2x-image pixels within half a pixel, and a 2x-image pixel mixes input pixels within 2.75 pixels
# (12 taps at 2x): 3.25, rounded up. With it the output equals that of a full reflection padding
# (tests/test_augment_counters.py).
_GEOMETRY_SLACK = 4


def _padding_bounds(W, H, device):
    """([4] offset, [4] limit): padding = min(ceil(reach + offset), limit) per side."""
    def build(dev):
        half = [(W - 1) / 2] * 2 + [(H - 1) / 2] * 2            # edge pixel centre, centred coordinates
        offset = torch.tensor([_GEOMETRY_SLACK - h for h in half], dtype=torch.float32, device=dev)
        return offset, torch.tensor(_full_padding(W, H), dtype=torch.float32, device=dev)
    return _cached(('padbounds', W, H), device, build)


def _fitted_padding(core, W, H, border):
    """Reflect padding [left, right, top, bottom] that covers every sample of the batch's transforms.

    core: [N, 3, 3] normalised output canvas -> centred input pixels. As upstream, the padding is
    fitted to the batch: the farthest sample position (the transformed canvas corners, since the map
    is affine), plus the reach of the sampler and the upsampling filter, capped at one full
    reflection. Reading the four integers back is the call's one device->host transfer (a stream
    sync on an accelerator); it keeps the upsampled intermediate as small as the draws allow.
    """
    if core.shape[0] == 0:
        return [0, 0, 0, 0]
    src = core[:, :2, :] @ _canvas_corners(W, H, border, core.device)         # [N, 2, 4] input pixels
    reach = torch.stack([-src, src], dim=2).amax(dim=(0, 3)).flatten()        # [-min x, max x, -min y, max y]
    offset, limit = _padding_bounds(W, H, core.device)
    pad = torch.minimum((reach + offset).ceil().clamp(min=0), limit)
    return pad.to(torch.int32).tolist()


def _geometry_frame(W, H, border, device):
    """([1, 3, 3] lag_in, [1, 3, 3] post): theta = (padded-frame scale) @ lag_in @ G_inv @ post.

    post: normalised output canvas -> centred output pixels, shifted by the filter lag; lag_in
    undoes the lag; the padded-frame scale and shift (per call, from the padding) move centred
    pixels to the normalised padded input.
    sym6 is not symmetric: the upsampler delays the signal by `lag` pixels and the flipped
    downsampler advances it by the same amount. Those cancel for the identity but not for a flip
    or rotation, so G_inv is conjugated with the lag to keep flips and rot90s aligned.
    """
    def build(dev):
        Wc, Hc = 2 * W + 4 * border, 2 * H + 4 * border
        lag = _filter_lag(SYM6)  # from the constant, not the buffer: no device read
        out_to_pix = _scale2d(Wc / 4, Hc / 4, 1, dev)
        return _translate2d(lag, lag, 1, dev), _translate2d(-lag, -lag, 1, dev) @ out_to_pix
    return _cached(('frame', W, H, border), device, build)


def _padded_theta(core, W, H, pad):
    """[N, 2, 3] sampler matrix from [N, 3, 3] core (-> centred input pixels) and the padding.

    Centred input pixels -> normalised coordinates of the padded image: shift by half the padding
    imbalance, scale by 2 / padded size. Python scalars only, so no host->device copy.
    """
    left, right, top, bottom = pad
    Wp, Hp = W + left + right, H + top + bottom
    row_x = (core[:, 0, :] + (left - right) / 2 * core[:, 2, :]) * (2 / Wp)
    row_y = (core[:, 1, :] + (top - bottom) / 2 * core[:, 2, :]) * (2 / Hp)
    return torch.stack([row_x, row_y], dim=1)


def _imgfilter_constants(num_bands, device):
    """(expected power per band [bands], one bool mask [bands] per band)."""
    def build(dev):
        # Expected power spectrum of natural images per band, so boosting a band keeps the total.
        power = torch.tensor([10, 1, 1, 1], dtype=torch.float32, device=dev) / 13
        masks = [torch.arange(num_bands, device=dev) == band for band in range(num_bands)]
        return power, masks
    return _cached(('imgfilter', num_bands), device, build)


def _cutout_coords(W, H, device):
    """Pixel-centre coordinates in [0, 1]: x as [1, 1, 1, W], y as [1, 1, H, 1]."""
    def build(dev):
        return (((torch.arange(W, device=dev) + 0.5) / W)[None, None, None, :],
                ((torch.arange(H, device=dev) + 0.5) / H)[None, None, :, None])
    return _cached(('cutout', W, H), device, build)

# ---------------------------------------------------------------------------------------------


class _Draws:
    """Random parameters for one forward pass: either sampled, or fixed at a percentile.

    In debug mode (percentile q given) every gate is open and every parameter sits at the
    q-quantile of its distribution, so a transform's effect can be inspected deterministically.
    """

    def __init__(self, batch_size, device, percentile=None):
        self.n = batch_size
        self.device = device
        self.q = percentile

    def uniform(self, *shape):
        """U(0, 1) samples of shape [N, *shape]."""
        shape = [self.n, *shape]
        if self.q is None:
            return torch.rand(shape, device=self.device)
        return torch.full(shape, float(self.q), device=self.device)

    def normal(self, *shape):
        """N(0, 1) samples of shape [N, *shape]."""
        shape = [self.n, *shape]
        if self.q is None:
            return torch.randn(shape, device=self.device)
        # The quantile on the host (no device read): inverse normal CDF of q.
        return torch.full(shape, statistics.NormalDist().inv_cdf(float(self.q)), device=self.device)

    def integer(self, high):
        """Uniform integers in {0, ..., high-1}, shape [N], as float32."""
        return torch.floor(self.uniform() * high).clamp(max=high - 1)

    def gate(self, prob):
        """Bernoulli(prob) per sample, shape [N] bool; prob may be a 0-d tensor."""
        if self.q is not None:
            return torch.ones([self.n], dtype=torch.bool, device=self.device)
        return torch.rand([self.n], device=self.device) < prob


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """ADA augmentation pipeline: geometric, colour, image-space filtering and corruptions.

    Each `<name>` argument is the probability multiplier of one transform (0 = disabled); the
    transform is applied to each sample with probability multiplier * p, where `p` is a buffer
    (overwritten by the training loop and adjusted by ADA). The `*_std`/`*_max` arguments set the
    strength of the random parameters (distributions as in the ADA paper, appendix B).
    """

    def __init__(self,
        xflip=0, rotate90=0, xint=0, xint_max=0.125,
        scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5,
        hue_max=1, saturation_std=1,
        imgfilter=0, imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1,
        noise=0, cutout=0, noise_std=0.1, cutout_size=0.5,
    ):
        super().__init__()
        self.register_buffer('p', torch.ones([]))  # overall multiplier for augmentation probability

        # Pixel blitting.
        self.xflip = float(xflip)
        self.rotate90 = float(rotate90)
        self.xint = float(xint)
        self.xint_max = float(xint_max)

        # General geometric transforms.
        self.scale = float(scale)
        self.rotate = float(rotate)
        self.aniso = float(aniso)
        self.xfrac = float(xfrac)
        self.scale_std = float(scale_std)
        self.rotate_max = float(rotate_max)
        self.aniso_std = float(aniso_std)
        self.xfrac_std = float(xfrac_std)

        # Colour transforms.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

        # Image-space filtering.
        self.imgfilter = float(imgfilter)
        self.imgfilter_bands = list(imgfilter_bands)
        self.imgfilter_std = float(imgfilter_std)

        # Corruptions.
        self.noise = float(noise)
        self.cutout = float(cutout)
        self.noise_std = float(noise_std)
        self.cutout_size = float(cutout_size)

        # sym6 low-pass for the 2x up/down resampling around grid_sample; [12], normalised to sum 1.
        self.register_buffer('Hz_geom', upfirdn2d.setup_filter(SYM6))
        # sym2-based 4-band filter bank for imgfilter; [4, 43].
        self.register_buffer('Hz_fbank', torch.as_tensor(_build_filter_bank(SYM2), dtype=torch.float32))

    # -----------------------------------------------------------------------------------------

    def forward(self, images, debug_percentile=None):
        """Augment a batch of images.

        Args:
            images: [N, C, H, W] float tensor in the network range [-1, 1]; C must be 1 or 3 when
                colour transforms are enabled.
            debug_percentile: None for normal random augmentation. A number q in (0, 1) applies
                every enabled transform to every sample (ignoring p) with its parameters at the
                q-quantile of their distributions; useful for visualisation and tests.

        Returns:
            augmented images, same shape and dtype.
        """
        assert isinstance(images, torch.Tensor) and images.ndim == 4, 'expected images [N, C, H, W]'
        N, C, H, W = images.shape
        draws = _Draws(N, images.device, debug_percentile)
        x = images
        B_inv = self._blit_matrix(draws, W, H)
        if B_inv is not None:
            x = self._apply_blit(x, B_inv)
        G_inv = self._geometric_matrix(draws, W, H)
        if G_inv is not None:
            x = self._apply_geometry(x, G_inv)
        C_mat = self._color_matrix(draws, C)
        if C_mat is not None:
            x = self._apply_color(x, C_mat)
        if self.imgfilter > 0:
            x = self._apply_imgfilter(x, draws)
        if self.noise > 0:
            x = self._apply_noise(x, draws)
        if self.cutout > 0:
            x = self._apply_cutout(x, draws)
        misc.assert_shape(x, [N, C, H, W])
        return x

    # -----------------------------------------------------------------------------------------
    # Geometry. Coordinates are pixels relative to the image centre (x right, y down); an inverse
    # matrix maps output pixel -> input pixel and grows by right-multiplication, each step appending
    # the inverse of its forward transform.
    #
    # Deliberate difference from upstream: the integer "blit" steps (xflip, rotate90, xint) are
    # executed first as an exact per-sample pixel gather instead of being folded into the resampled
    # matrix. The composition is the same (blits act on the image before the general transforms),
    # but blits are now lossless as the paper intends: a flip is exactly torch.flip, whereas the
    # sym6 resampling chain is only an identity for the identity transform.

    def _blit_matrix(self, draws, W, H):
        """Inverse integer transform [N, 3, 3] (xflip, rotate90, xint), or None if disabled."""
        if max(self.xflip, self.rotate90, self.xint) <= 0:
            return None
        n, dev, p = draws.n, draws.device, self.p
        B_inv = _eye(3, dev).expand(n, 3, 3)
        if self.xflip > 0:
            i = torch.where(draws.gate(self.xflip * p), draws.integer(2), 0)
            B_inv = B_inv @ _scale2d(1 - 2 * i, 1, n, dev)                         # flip is its own inverse
        if self.rotate90 > 0:
            i = torch.where(draws.gate(self.rotate90 * p), draws.integer(4), 0)
            B_inv = B_inv @ _rotate2d(np.pi / 2 * i, n, dev)                       # inverse of rot(-pi/2*i)
        if self.xint > 0:
            t = (draws.uniform(2) * 2 - 1) * self.xint_max
            t = torch.where(draws.gate(self.xint * p)[:, None], t, 0)
            B_inv = B_inv @ _translate2d(-torch.round(t[:, 0] * W), -torch.round(t[:, 1] * H), n, dev)
        return B_inv

    @staticmethod
    def _apply_blit(x, B_inv):
        """Exact integer resampling: gather each output pixel from the reflected input."""
        N, C, H, W = x.shape
        src = B_inv @ _blit_coords(W, H, x.device)                              # [N, 3, HW]
        # Rounding only matters for rotate90 of non-square images with odd W - H.
        sx = _mirror_index(torch.round(src[:, 0] + (W - 1) / 2).long(), W)
        sy = _mirror_index(torch.round(src[:, 1] + (H - 1) / 2).long(), H)
        index = (sy * W + sx)[:, None, :].expand(N, C, H * W)
        return x.reshape(N, C, H * W).gather(2, index).reshape(N, C, H, W)

    def _geometric_matrix(self, draws, W, H):
        """Inverse general transform [N, 3, 3] (scale, rotate, aniso, xfrac), or None if disabled."""
        if max(self.scale, self.rotate, self.aniso, self.xfrac) <= 0:
            return None
        n, dev, p = draws.n, draws.device, self.p
        G_inv = _eye(3, dev).expand(n, 3, 3)
        if self.scale > 0:
            s = torch.exp2(draws.normal() * self.scale_std)
            s = torch.where(draws.gate(self.scale * p), s, 1)
            G_inv = G_inv @ _scale2d(1 / s, 1 / s, n, dev)

        # Pre- and post-rotation are gated separately so that P(at least one) = rotate * p.
        p_rot = 1 - torch.sqrt((1 - self.rotate * p).clamp(0, 1))
        if self.rotate > 0:
            theta = (draws.uniform() * 2 - 1) * np.pi * self.rotate_max
            theta = torch.where(draws.gate(p_rot), theta, 0)
            G_inv = G_inv @ _rotate2d(theta, n, dev)                                # inverse of rot(-theta)
        if self.aniso > 0:
            s = torch.exp2(draws.normal() * self.aniso_std)
            s = torch.where(draws.gate(self.aniso * p), s, 1)
            G_inv = G_inv @ _scale2d(1 / s, s, n, dev)
        if self.rotate > 0:
            theta = (draws.uniform() * 2 - 1) * np.pi * self.rotate_max
            theta = torch.where(draws.gate(p_rot), theta, 0)
            G_inv = G_inv @ _rotate2d(theta, n, dev)
        if self.xfrac > 0:
            t = draws.normal(2) * self.xfrac_std
            t = torch.where(draws.gate(self.xfrac * p)[:, None], t, 0)
            G_inv = G_inv @ _translate2d(-t[:, 0] * W, -t[:, 1] * H, n, dev)
        return G_inv

    def _apply_geometry(self, x, G_inv):
        """Reflect pad, 2x upsample, resample with G_inv, 2x downsample."""
        N, C, H, W = x.shape
        border = self.Hz_geom.shape[0] // 4                     # 3 output pixels for 12 taps
        lag_in, post = _geometry_frame(W, H, border, x.device)
        core = lag_in @ G_inv @ post                            # normalised canvas -> centred input pixels
        pad = self._geometry_padding(core, W, H, border)
        x = _reflect_pad(x, pad)
        x = upfirdn2d.upsample2d(x=x, f=self.Hz_geom, up=2)     # [N, C, 2Hp, 2Wp]
        Wc, Hc = 2 * W + 4 * border, 2 * H + 4 * border         # canvas: image plus `border` px
        theta = _padded_theta(core.to(torch.promote_types(core.dtype, x.dtype)), W, H, pad)  # float64 images: float64 grid
        grid = F.affine_grid(theta.to(x.dtype), [N, C, Hc, Wc], align_corners=False)
        # R1 through the pipe differentiates this twice w.r.t. x: torch's kernels plus a double
        # backward of our own (grid_sample_gradfix).
        x = grid_sample_gradfix.grid_sample(x, grid)

        # Flipped filter on the way down cancels the phase of the (nearly symmetric) sym6.
        return upfirdn2d.downsample2d(x=x, f=self.Hz_geom, down=2, padding=-border * 2, flip_filter=True)

    @staticmethod
    def _geometry_padding(core, W, H, border):
        """Reflect padding [left, right, top, bottom] before the upsampling: fitted to the batch.

        Any padding that covers every sample gives the same output (to float rounding: the normalised
        grid differs); one full reflection (`_full_padding`) covers all draws but makes the upsampled
        intermediate about 2x larger per axis than a typical batch needs (4-5x the memory).
        """
        return _fitted_padding(core, W, H, border)

    # -----------------------------------------------------------------------------------------
    # Colour: a 4x4 matrix acting on [r, g, b, 1] in the [-1, 1] range, grown by left-multiplication
    # (the first step listed acts first). The luma axis is v = [1, 1, 1, 0] / sqrt(3).

    def _color_matrix(self, draws, num_channels):
        """Colour transform [N, 4, 4], or None if no colour transform is enabled."""
        if max(self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation) <= 0:
            return None
        n, dev, p = draws.n, draws.device, self.p
        I_4 = _eye(4, dev)
        vv, chroma, e33 = _luma_constants(dev)
        C = I_4.expand(n, 4, 4)

        if self.brightness > 0:
            b = draws.normal() * self.brightness_std
            b = torch.where(draws.gate(self.brightness * p), b, 0)
            C = _translate3d(b, b, b, n, dev) @ C
        if self.contrast > 0:
            c = torch.exp2(draws.normal() * self.contrast_std)
            c = torch.where(draws.gate(self.contrast * p), c, 1)
            C = _scale3d(c, c, c, n, dev) @ C
        if self.lumaflip > 0:
            i = torch.where(draws.gate(self.lumaflip * p), draws.integer(2), 0)
            C = (I_4 - 2 * vv * i[:, None, None]) @ C                 # Householder reflection of luma
        if self.hue > 0 and num_channels > 1:
            theta = (draws.uniform() * 2 - 1) * np.pi * self.hue_max
            theta = torch.where(draws.gate(self.hue * p), theta, 0)
            C = _rotate3d(_LUMA_AXIS, theta, n, dev) @ C              # rotate chroma about the luma axis
        if self.saturation > 0 and num_channels > 1:
            s = torch.exp2(draws.normal() * self.saturation_std)
            s = torch.where(draws.gate(self.saturation * p), s, 1)
            # Keep luma, scale chroma by s; the homogeneous entry stays 1.
            C = (vv + chroma * s[:, None, None] + e33) @ C
        return C

    @staticmethod
    def _apply_color(x, C):
        """Apply [N, 4, 4] colour matrices to [N, C, H, W] images (C = 1 or 3)."""
        N, num_channels, H, W = x.shape
        C = C.to(x.dtype)
        flat = x.reshape(N, num_channels, H * W)
        if num_channels == 3:
            flat = C[:, :3, :3] @ flat + C[:, :3, 3:]
        elif num_channels == 1:
            # Equivalent to replicating the channel to RGB, transforming, and averaging back.
            row = C[:, :3, :].mean(dim=1, keepdim=True)             # [N, 1, 4]
            flat = flat * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
        else:
            raise ValueError(f'AugmentPipe colour transforms need 1 or 3 image channels, got {num_channels}')
        return flat.reshape(N, num_channels, H, W)

    # -----------------------------------------------------------------------------------------
    # Image-space filtering and corruptions.

    def _apply_imgfilter(self, x, draws):
        """Random per-band gains of the sym2 filter bank, applied separably with reflect padding."""
        N, C, H, W = x.shape
        num_bands, taps = self.Hz_fbank.shape
        assert len(self.imgfilter_bands) == num_bands, f'imgfilter_bands must have {num_bands} entries'
        expected_power, band_masks = _imgfilter_constants(num_bands, x.device)
        gains = None
        for band, strength in enumerate(self.imgfilter_bands):
            t = torch.exp2(draws.normal() * self.imgfilter_std)
            t = torch.where(draws.gate(self.imgfilter * self.p * strength), t, 1)
            t_vec = torch.where(band_masks[band], t[:, None], 1.0)            # [N, bands]
            t_vec = t_vec / (expected_power * t_vec.square()).sum(dim=-1, keepdim=True).sqrt()
            gains = t_vec if gains is None else gains * t_vec               # 1 * t_vec == t_vec exactly
        kernel = (gains @ self.Hz_fbank).to(x.dtype)                  # [N, taps]
        kernel = kernel[:, None, :].expand(N, C, taps).reshape(N * C, 1, taps)
        half = taps // 2
        y = x.reshape(1, N * C, H, W)                                 # one group per image channel
        y = F.conv2d(_reflect_pad(y, [half, half, 0, 0]), kernel[:, :, None, :], groups=N * C)
        y = F.conv2d(_reflect_pad(y, [0, 0, half, half]), kernel[:, :, :, None], groups=N * C)
        return y.reshape(N, C, H, W)

    def _apply_noise(self, x, draws):
        """Additive Gaussian noise with per-sample sigma = |N(0,1)| * noise_std."""
        sigma = draws.normal().abs() * self.noise_std
        sigma = torch.where(draws.gate(self.noise * self.p), sigma, 0)
        return x + torch.randn_like(x) * sigma[:, None, None, None].to(x.dtype)

    def _apply_cutout(self, x, draws):
        """Zero a square of side cutout_size (relative to the image) at a uniform random centre."""
        N, C, H, W = x.shape
        size = torch.where(draws.gate(self.cutout * self.p), self.cutout_size, 0.0)
        centre = draws.uniform(2)
        coord_x, coord_y = _cutout_coords(W, H, x.device)
        half = (size / 2)[:, None, None, None]
        keep_x = (coord_x - centre[:, 0, None, None, None]).abs() >= half
        keep_y = (coord_y - centre[:, 1, None, None, None]).abs() >= half
        return x * torch.logical_or(keep_x, keep_y).to(x.dtype)
