"""Metric records name NVIDIA's Inception only for NVIDIA's bytes (sha256), and always keep the sha256."""

import hashlib
import os

import pytest
import torch

from dnnlib import util
from metrics import detector as det


class _FakeInception(torch.nn.Module):
    """A TorchScript module with NVIDIA's calling convention (return_features / no_output_bias)."""

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        return x.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


@pytest.fixture
def fresh_detector_state(monkeypatch, tmp_path):
    util.set_cache_dir(os.fspath(tmp_path / 'cache'))
    monkeypatch.setattr(det, '_detector_cache', {})
    monkeypatch.setattr(det, '_sha_cache', {})
    monkeypatch.setattr(det, '_auto_choice', None)
    yield tmp_path
    util.set_cache_dir(None)


def _put_in_nvidia_cache_path():
    path = util.url_cache_path(det.NVIDIA_INCEPTION_URLS[0])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.jit.save(torch.jit.script(_FakeInception()), path)
    with open(path, 'rb') as f:
        return path, hashlib.sha256(f.read()).hexdigest()


def test_published_sha256_is_the_known_value():
    assert det.NVIDIA_INCEPTION_SHA256 == 'f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4'


@pytest.mark.parametrize('spec', ['nvidia', 'auto'])
def test_unknown_file_at_nvidias_cache_path_is_recorded_unverified(fresh_detector_state, spec):
    path, sha = _put_in_nvidia_cache_path()
    d = det.resolve_detector(spec, device='cpu')
    assert d.name == f'inception at {os.path.abspath(path)}, sha256 {sha}, unverified'
    assert d.info() == dict(name=d.name, sha256=sha)
    assert not d.name.startswith('nvidia')


def test_nvidia_name_only_for_the_published_bytes(fresh_detector_state, monkeypatch):
    path, sha = _put_in_nvidia_cache_path()
    monkeypatch.setattr(det, 'NVIDIA_INCEPTION_SHA256', sha)  # pretend these bytes are the published file
    d = det.resolve_detector('nvidia', device='cpu')
    assert d.name == 'nvidia-inception' and d.info() == dict(name='nvidia-inception', sha256=sha)


def test_detector_given_by_path_is_named_by_its_bytes(fresh_detector_state):
    path = os.fspath(fresh_detector_state / 'my-inception.pt')
    torch.jit.save(torch.jit.script(_FakeInception()), path)
    d = det.resolve_detector(path, device='cpu')
    assert d.name.startswith(f'inception at {os.path.abspath(path)}, sha256 ') and d.name.endswith(', unverified')
    assert d.sha256 in d.name and len(d.sha256) == 64
