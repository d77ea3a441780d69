"""metrics.vgg16: NVIDIA's vgg16.pt found in the download cache (a stand-in here), the one-line error when
it is missing, and the precision/recall and PPL metrics going through the same loader."""

import os

import numpy as np
import pytest
import torch

from metrics import detector, metric_main, vgg16
from vgg16_standin import StandInVGG16, block_downloads, install_standin


@pytest.fixture
def standin(tmp_path, monkeypatch):
    return install_standin(tmp_path / 'cache', monkeypatch)


def test_cached_file_is_loaded_once_with_its_identity(standin):
    vgg = vgg16.load_vgg16('cpu')
    assert vgg.name == 'nvidia-vgg16' and vgg.path == standin and vgg.kind == 'nvidia'
    assert vgg.sha256 == detector.file_sha256(standin) and not vgg.has_classifier
    assert vgg16.load_vgg16('cpu') is vgg


def test_features_and_lpips_use_the_networks_own_calls(standin):
    vgg = vgg16.load_vgg16('cpu')
    ref = StandInVGG16()
    imgs = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(vgg.features(imgs), ref(imgs, return_features=True))
    gray = imgs[:, :1].float()
    got = vgg16.lpips_features(vgg, gray)
    torch.testing.assert_close(got, ref(gray.repeat(1, 3, 1, 1), resize_images=False, return_lpips=True))
    # Differentiable with respect to the images (the projector optimises through it).
    x = imgs.float().requires_grad_(True)
    vgg16.lpips_features(vgg, x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_file_is_one_line_naming_where_to_put_it(tmp_path, monkeypatch):
    from dnnlib import util
    monkeypatch.setattr(util, '_cache_dir_override', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(tmp_path / 'empty'))
    block_downloads(monkeypatch)
    with pytest.raises(vgg16.VGG16Unavailable) as err:
        vgg16.load_vgg16('cpu')
    message = str(err.value)
    assert '\n' not in message and vgg16.vgg16_cache_path() in message and vgg16.VGG16_URLS[-1] in message
    assert str(tmp_path / 'empty') in vgg16.vgg16_cache_path()
    assert isinstance(err.value, detector.DetectorUnavailable)   # calc_metrics reports these in one line


def test_corrupt_cached_file_is_named(tmp_path, monkeypatch):
    path = install_standin(tmp_path / 'cache', monkeypatch)
    with open(path, 'wb') as f:
        f.write(b'<html>proxy error</html>')
    with pytest.raises(detector.DetectorUnavailable, match=os.path.basename(path)):
        vgg16.load_vgg16('cpu')

# ----------------------------------------------------------------------------
# The metrics that use it.


def _tiny_generator():
    networks = pytest.importorskip('training.networks')
    torch.manual_seed(0)
    return networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None))


def _png_zip(path, n=8, res=16):
    import zipfile
    import PIL.Image
    images = np.random.default_rng(0).integers(0, 256, size=(n, res, res, 3), dtype=np.uint8)
    with zipfile.ZipFile(path, 'w') as z:
        for i, img in enumerate(images):
            with z.open(f'img{i:04d}.png', 'w') as f:
                PIL.Image.fromarray(img).save(f, format='PNG')
    return dict(class_name='training.dataset.ImageFolderDataset', path=os.fspath(path), resolution=res,
                use_labels=False, xflip=False, max_size=None, random_seed=0)


@pytest.mark.parametrize('metric', ['pr50k3_full', 'ppl2_wend'])
def test_pr_and_ppl_record_the_loaded_vgg16(metric, standin, tmp_path):
    kwargs = _png_zip(tmp_path / 'set.zip')
    res = metric_main.calc_metric(metric, _tiny_generator(), kwargs, device='cpu', num_gen=8, seed=0)
    assert res.detector == dict(name='nvidia-vgg16', sha256=detector.file_sha256(standin))
    values = list(res.results.values())
    assert values and all(np.isfinite(v) for v in values)
    if metric.startswith('pr'):
        assert all(0 <= v <= 1 for v in values)
    else:
        assert values[0] > 0    # distinct end points of a random generator have a non-zero path length


def test_pr_without_vgg16_fails_before_generating(tmp_path, monkeypatch):
    from dnnlib import util
    monkeypatch.setattr(util, '_cache_dir_override', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(tmp_path / 'empty'))
    block_downloads(monkeypatch)
    G = _tiny_generator()
    calls = []
    G.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(vgg16.VGG16Unavailable):
        metric_main.calc_metric('pr50k3_full', G, _png_zip(tmp_path / 'set.zip'), device='cpu', num_gen=8)
    assert calls == []
