"""A small TorchScript stand-in for NVIDIA's vgg16.pt with the same call interface, and a fixture-style
helper that puts it where metrics.vgg16.load_vgg16 looks (the dnnlib download cache).

The LPIPS output concatenates the image itself (scaled to [-1, 1]) with unit-normalised random-conv
features, each divided by sqrt(H * W) as LPIPS averages over positions: the squared distance of two
vectors is then mean pixel MSE plus a feature term, so lowering it provably brings images closer.
"""

import os
import warnings

import torch

FEATURE_CHANNELS = 8


class StandInVGG16(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn([FEATURE_CHANNELS, 3, 3, 3], generator=g) / 3)

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_features: bool = False,
                return_lpips: bool = False) -> torch.Tensor:
        x = img.to(torch.float32) / 127.5 - 1
        if resize_images:
            # The real network resizes to 224; 32 keeps the stand-in fast.
            x = torch.nn.functional.interpolate(x, size=[32, 32], mode='area')
        f = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x, self.weight, padding=[1, 1]), 0.2)
        if return_lpips:
            scale = float(x.shape[2] * x.shape[3]) ** -0.5
            f = f / (f.square().sum(dim=1, keepdim=True) + 1e-10).sqrt()
            return torch.cat([x.flatten(1) * scale, f.flatten(1) * scale], dim=1)
        if return_features:
            return torch.cat([f.mean(dim=[2, 3]), f.square().mean(dim=[2, 3])], dim=1)
        return f.mean(dim=[2, 3])


def install_standin(cache_dir, monkeypatch):
    """Point the dnnlib cache at `cache_dir`, save the stand-in as the cached vgg16.pt, block downloads.

    Returns:
        The path of the cached stand-in file.
    """
    from dnnlib import util
    from metrics import vgg16
    monkeypatch.setattr(util, '_cache_dir_override', None)  # an explicit set_cache_dir() would win over the env
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(cache_dir))
    block_downloads(monkeypatch)
    path = vgg16.vgg16_cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # TorchScript is deprecated, but vgg16.pt is TorchScript
        torch.jit.save(torch.jit.script(StandInVGG16()), path)
    return path


def block_downloads(monkeypatch):
    """Make every download fail at once, as on an offline machine (tests never reach the network)."""
    from dnnlib import util

    def offline(url, *args, **kwargs):
        raise IOError(f'could not download {url}: offline (test)')
    monkeypatch.setattr(util, 'download_to_cache', offline)
