"""conv2d_resample: 2-D convolution fused with FIR up/downsampling.

Semantics (as upstream), per sample:
    x -> zero-insert by `up` -> pad -> conv with w -> FIR f -> keep every `down`-th sample
where the FIR runs with gain up**2 when up > 1 (DC-preserving), and once more (gain 1) before the
decimation when down > 1. `padding` is given w.r.t. the upsampled image and applied once; the layer
adds the filter's own padding on top of it:
    up > 1:   [+(fw+up-1)//2, +(fw-up)//2]  per axis
    down > 1: [+(fw-down+1)//2, +(fw-down)//2]
flip_weight=True correlates with w (like F.conv2d); False is a true convolution (StyleGAN's up=2 layers).

The FIR and the convolution are linear and shift-invariant, so they commute; the fast paths below reorder
them to run the convolution on the smallest image (derivations beside each path). All paths are plain
PyTorch ops plus upfirdn2d, so gradients of any order work.
"""

import torch
import torch.nn.functional as F

from torch_utils.ops import upfirdn2d


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """F.conv2d / F.conv_transpose2d with the flip_weight convention (False = true convolution)."""
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def _transpose_weight(w, groups):
    """[O, C/g, kh, kw] conv weight -> [C, O/g, kh, kw] conv_transpose weight, group by group."""
    out_ch, in_per_group, kh, kw = w.shape
    if groups == 1:
        return w.transpose(0, 1)
    w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw)       # [g, O/g, C/g, kh, kw]
    return w.transpose(1, 2).reshape(groups * in_per_group, out_ch // groups, kh, kw)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """2-D convolution with optional FIR upsampling before it and FIR downsampling after it.

    Args:
        x: [N, C, H, W] input.
        w: [O, C/groups, kh, kw] weight, same dtype as x.
        f: float32 FIR filter from upfirdn2d.setup_filter, or None (identity).
        up: Integer upsampling factor (>= 1).
        down: Integer downsampling factor (>= 1).
        padding: int, [x, y] or [x0, x1, y0, y1], relative to the upsampled image.
        groups: Convolution groups.
        flip_weight: True = correlation (F.conv2d), False = true convolution.
        flip_filter: Passed to upfirdn2d.

    Returns:
        [N, O, H', W'] tensor of x's dtype.
    """
    if x.ndim != 4 or w.ndim != 4 or w.dtype != x.dtype:
        raise ValueError('conv2d_resample needs 4-D x and w of the same dtype')
    if f is not None and not (f.ndim in (1, 2) and f.dtype == torch.float32):
        raise ValueError('f must be a float32 1-D or 2-D filter from setup_filter')
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f'up and down must be ints >= 1, got up={up}, down={down}')
    out_ch, in_per_group, kh, kw = w.shape
    if x.shape[1] != in_per_group * groups or out_ch % groups:
        raise ValueError(f'x has {x.shape[1]} channels, w {list(w.shape)} with groups={groups} does not fit')
    fw, fh = upfirdn2d._get_filter_size(f)
    px0, px1, py0, py1 = upfirdn2d._parse_padding(padding)

    # The filter's own padding, on top of the user's.
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pad = [px0, px1, py0, py1]

    # 1x1 + down: a pointwise conv commutes with filtering and decimation, so shrink the image first.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 + up: convolve at low resolution, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=pad, gain=up ** 2, flip_filter=flip_filter)

    # Down only: filter (with all the padding), then a strided conv does conv + decimation in one.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Up (optionally followed by down): conv on the zero-inserted image == strided transposed conv.
    # Correlating the zero-inserted image with w equals conv_transpose2d with the spatially flipped w,
    # hence the inverted flip. The full transposed output T relates to the generic path's conv output a
    # by a[o] = T[o + k - 1 - p0], i.e. a = pad(T, [p0 - (k-1), p1 - (k-up)]); whatever cropping both
    # sides share is delegated to conv_transpose2d's own padding.
    if up > 1:
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, _transpose_weight(w, groups), stride=up, padding=[pyt, pxt], groups=groups,
                  transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                                flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # Plain conv with symmetric, non-negative padding.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else (asymmetric or negative padding, no resampling): pad/crop explicitly, then conv.
    x = upfirdn2d.upfirdn2d(x, None, padding=pad)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
