"""Perceptual Path Length (Karras et al. 2019, "A Style-Based Generator Architecture", sec. 3 / eq. 2),
as upstream's ppl2_wend: W space, end-point sampling, no crop, epsilon 1e-4, LPIPS distance with
NVIDIA's VGG16 (`vgg16.pt`, called with resize_images=False, return_lpips=True).

  l = E[ d(g(lerp(w0, w1, t)), g(lerp(w0, w1, t + eps))) / eps^2 ],  t = 0 ('end') or U[0, 1) ('full'),

where d is the squared LPIPS distance; samples outside the [1st, 99th] percentiles are dropped
before averaging (upstream's outlier rule).
"""

import numpy as np
import torch

from . import metric_utils
from .vgg16 import load_vgg16, lpips_features


def slerp(a, b, t):
    """Spherical interpolation of unit vectors along the last axis (used for Z-space paths)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    d = a * torch.cos(p) + c * torch.sin(p)
    return d / d.norm(dim=-1, keepdim=True)


def filtered_mean(dist) -> float:
    """Mean of the values within [1st percentile ('lower'), 99th percentile ('higher')]."""
    dist = np.asarray(dist, np.float64)
    lo = np.percentile(dist, 1, method='lower')
    hi = np.percentile(dist, 99, method='higher')
    return float(dist[(lo <= dist) & (dist <= hi)].mean())


def _randomize_const_noise(synthesis, generator):
    for name, buf in synthesis.named_buffers():
        if name.endswith('.noise_const'):
            buf.copy_(torch.randn(buf.shape, device=buf.device, generator=generator))


def _images_for_lpips(img, crop):
    """Generator output [N, C, H, W] in [-1, 1] -> VGG16 input in [0, 255], <= 256 px, 3 channels."""
    if crop:  # the face-centred crop of upstream (rows 3c:7c, cols 2c:6c with c = H // 8)
        c = img.shape[2] // 8
        img = img[:, :, c * 3:c * 7, c * 2:c * 6]
    factor = img.shape[2] // 256
    if factor > 1:  # box downsampling to at most 256 px
        n, ch, h, w = img.shape
        img = img.reshape(n, ch, h // factor, factor, w // factor, factor).mean(dim=(3, 5))
    img = (img + 1) * (255 / 2)
    return img.repeat(1, 3, 1, 1) if img.shape[1] == 1 else img


def path_length_samples(opts, lpips, num_samples, epsilon, space, sampling, crop, batch_size):
    """Squared-LPIPS path derivative samples [num_samples] (float64 numpy), gathered over ranks.

    Args:
        lpips: callable(images float [N, 3, H, W] in [0, 255]) -> [N, F] LPIPS feature vectors.
    """
    assert space in ('z', 'w') and sampling in ('full', 'end')
    G = opts.G
    gen = opts.torch_generator(salt=4)
    label_rng = opts.numpy_rng(salt=5)
    dataset = metric_utils.construct_dataset(opts.dataset_kwargs) if G.c_dim > 0 else None
    samples = []
    progress = metric_utils.Progress(opts, 'path lengths', num_samples)
    done = 0
    with torch.no_grad():
        while done < num_samples:
            z = torch.randn([batch_size * 2, G.z_dim], device=opts.device, generator=gen)
            t = torch.rand([batch_size], device=opts.device, generator=gen) * (sampling == 'full')
            if dataset is not None:
                idx = label_rng.integers(len(dataset), size=batch_size)
                c = torch.from_numpy(np.stack([dataset.get_label(int(i)) for i in idx])).to(opts.device)
            else:
                c = torch.zeros([batch_size, 0], device=opts.device)
            c = torch.cat([c, c])
            if space == 'w':
                w0, w1 = G.mapping(z=z, c=c).chunk(2)
                wt0 = w0.lerp(w1, t[:, None, None])
                wt1 = w0.lerp(w1, t[:, None, None] + epsilon)
            else:
                z0, z1 = z.chunk(2)
                zt0 = slerp(z0, z1, t[:, None])
                zt1 = slerp(z0, z1, t[:, None] + epsilon)
                wt0, wt1 = G.mapping(z=torch.cat([zt0, zt1]), c=c).chunk(2)
            _randomize_const_noise(G.synthesis, gen)
            ws = torch.stack([wt0, wt1], dim=1).flatten(0, 1)  # pairs adjacent: [t0, t1, t0, t1, ...]
            img = G.synthesis(ws, noise_mode='const', force_fp32=True)
            feats = lpips(_images_for_lpips(img, crop))
            f0, f1 = feats.reshape(batch_size, 2, -1).unbind(1)
            dist = (f0 - f1).square().sum(dim=1) / epsilon ** 2
            dist = metric_utils.gather_interleaved(dist[:, None].double(), opts)[:, 0]
            samples.append(dist.cpu().numpy())
            done += len(dist)
            progress.update(done)
    progress.close()
    return np.concatenate(samples)[:num_samples]


def compute_ppl(opts, num_samples, epsilon, space, sampling, crop, batch_size, lpips=None) -> float:
    """PPL of opts.G; `lpips` defaults to NVIDIA's VGG16 LPIPS (must be cached or downloadable)."""
    if lpips is None:
        vgg = load_vgg16(opts.device)
        opts.detector_used = vgg
        lpips = lambda img: lpips_features(vgg, img)  # noqa: E731
    dist = path_length_samples(opts, lpips, num_samples, epsilon, space, sampling, crop, batch_size)
    if opts.rank != 0:
        return float('nan')
    return filtered_mean(dist)
