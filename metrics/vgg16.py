"""NVIDIA's VGG16 feature network (``vgg16.pt``), shared by precision/recall, PPL and projector.py.

The file is the TorchScript model published with stylegan2-ada-pytorch. It is called in two ways:

- ``module(uint8 images, return_features=True)`` -> [N, 4096] features (precision/recall; through
  ``Detector.features``, which resizes inside the model);
- ``module(float images in [0, 255], resize_images=False, return_lpips=True)`` -> [N, F] LPIPS feature
  vectors whose squared Euclidean distance is the LPIPS distance (PPL and the projector).

It is found like the Inception detector: the copy in the dnnlib download cache, else a download. There
is no substitute network: a different VGG would silently change every PR, PPL and projection result,
so when the file cannot be had the error says where to put it.
"""

import torch

from dnnlib import util
from . import detector

VGG16_URLS = detector.NVIDIA_VGG16_URLS
LPIPS_MAX_SIZE = 256    # NVIDIA's LPIPS weights were fitted on images of at most this size


class VGG16Unavailable(detector.DetectorUnavailable):
    """vgg16.pt is neither in the download cache nor downloadable; the message says where to put it."""


def vgg16_cache_path() -> str:
    """Where a manually downloaded vgg16.pt is picked up (the cache path of the first known URL)."""
    return util.url_cache_path(VGG16_URLS[0])


def load_vgg16(device='cpu') -> detector.Detector:
    """NVIDIA's VGG16 on `device`, loaded once per process and device.

    Raises:
        VGG16Unavailable: not cached and the download failed (one line: the reason and where to put it).
        DetectorUnavailable: the cached file is not a loadable TorchScript model (it names the file).
    """
    try:
        path = detector._cached_or_download(VGG16_URLS)
    except FileNotFoundError as e:
        raise VGG16Unavailable(f'NVIDIA\'s VGG16 is unavailable ({e}); download {VGG16_URLS[-1]} and save it '
                               f'as {vgg16_cache_path()}') from e
    return detector._build(path, 'nvidia-vgg16', device)


def lpips_features(vgg, images: torch.Tensor) -> torch.Tensor:
    """LPIPS feature vectors of float images in [0, 255]; differentiable with respect to `images`.

    Args:
        vgg: a Detector from load_vgg16 (or a stand-in with the same `module` call interface).
        images: float [N, C, H, W], C in {1, 3}, already at most LPIPS_MAX_SIZE pixels on a side.

    Returns:
        float32 [N, F]; sum((a - b) ** 2) over F is the LPIPS distance of two images.
    """
    assert images.ndim == 4 and images.is_floating_point(), f'expected float [N, C, H, W], got {images.dtype}'
    x = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images
    return vgg.module(x.to(vgg.device), resize_images=False, return_lpips=True).to(torch.float32)
