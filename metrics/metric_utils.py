"""Shared machinery of the metrics: options, feature statistics, the real-statistics cache, and the
loops that push real and generated images through a detector.

Upstream semantics kept:
- real images come uint8 from the dataset; rank r of k takes items (i*k + r) mod N;
- generated images are quantised as (x * 127.5 + 128).clamp(0, 255).to(uint8) (truncating cast);
- mean/covariance are accumulated as float64 sums of x and x^T x; cov = E[x x^T] - mu mu^T (divide by N);
- features gathered across ranks are interleaved in item order.
Changes: the real-statistics cache is keyed by the detector's sha256, the statistics
options, the item count and the dataset's content_hash() (not its path), and stored as .npz.
"""

import copy
import hashlib
import json
import os
import sys

import numpy as np
import torch

from dnnlib import util
from . import detector as detector_lib

CACHE_FORMAT_VERSION = 1

# ----------------------------------------------------------------------------
# The real dataset.


def construct_dataset(dataset_kwargs):
    """Build the real dataset named by dataset_kwargs['class_name'].

    Unlike construct-by-name, this never imports a module or calls a function named in the kwargs
    (they may come from a downloaded pickle): the name must be a torch Dataset class of an already
    imported module (training.dataset is imported here).
    """
    import training.dataset  # noqa: F401  (makes training.dataset.ImageFolderDataset resolvable)
    kwargs = dict(dataset_kwargs)
    name = kwargs.pop('class_name', None)
    module_name, _, attr = name.rpartition('.') if isinstance(name, str) else ('', '', '')
    cls = getattr(sys.modules.get(module_name), attr, None) if module_name else None
    if not (isinstance(cls, type) and issubclass(cls, torch.utils.data.Dataset)):
        raise ValueError(f'dataset class_name {str(name)[:80]!r} is not a dataset class of an imported module')
    return cls(**kwargs)


# ----------------------------------------------------------------------------
# Options shared by every metric.


class MetricOptions:
    """Everything a metric function needs.

    Args:
        G: generator (deep-copied to `device` in eval mode by calc_metric), or None for tests of the
            real-data path.
        G_kwargs: extra keyword arguments for G (upstream: none, so psi = 1 and noise_mode='random').
        dataset_kwargs: kwargs for dnnlib.util.construct_class_by_name to build the real dataset.
        num_gpus, rank: process layout; features are gathered across ranks when num_gpus > 1.
        device: torch device.
        progress: None/False (silent), True (tqdm bars on rank 0) or a callable(tag, done, total).
        cache: reuse/write the real-statistics cache.
        detector: spec for detector.resolve_detector (None = 'auto') or a Detector.
        seed: None (fresh randomness, as upstream) or an int for reproducible z, labels and subsets.
        batch_size: images per detector call (per rank).
    """

    def __init__(self, G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None,
                 progress=None, cache=True, detector=None, seed=None, batch_size=64):
        assert 0 <= rank < num_gpus
        self.G = G
        self.G_kwargs = util.EasyDict(G_kwargs or {})
        self.dataset_kwargs = util.EasyDict(dataset_kwargs or {})
        self.num_gpus = num_gpus
        self.rank = rank
        self.device = torch.device(device) if device is not None else torch.device(
            'cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
        self.progress = progress
        self.cache = cache
        self.detector_spec = detector
        self.detector_used = None   # set by get_detector (or a metric using another network)
        self.seed = seed
        self.batch_size = batch_size

    def get_detector(self):
        """The Inception detector for this run (loaded once per weights file and device)."""
        det = detector_lib.resolve_detector(self.detector_spec, device=self.device, verbose=self.rank == 0)
        self.detector_used = det
        return det

    def numpy_rng(self, salt):
        """Per-purpose numpy Generator: seeded from (seed, rank, salt) when a seed is given."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.rank, salt])

    def torch_generator(self, salt):
        """Per-purpose torch.Generator on the device, or None (global RNG) without a seed."""
        if self.seed is None:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(np.random.SeedSequence([self.seed, self.rank, salt]).generate_state(1)[0]))
        return gen

# ----------------------------------------------------------------------------
# Progress reporting.


class Progress:
    """Progress of one loop: tqdm on rank 0 when opts.progress is True, a callback when callable."""

    def __init__(self, opts, tag, total):
        self.callback = opts.progress if callable(opts.progress) else None
        self.tag, self.total, self.done = tag, total, 0
        self.bar = None
        if opts.progress is True and opts.rank == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=tag, unit='img', dynamic_ncols=True, leave=False)

    def update(self, done):
        done = min(done, self.total)
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done
        if self.callback is not None:
            self.callback(self.tag, done, self.total)

    def close(self):
        if self.bar is not None:
            self.bar.close()

# ----------------------------------------------------------------------------
# Feature statistics.


class FeatureStats:
    """Running statistics of feature vectors.

    Args:
        capture_all: keep every feature row (float32), for KID/PR/IS.
        capture_mean_cov: accumulate float64 sum x and sum x^T x, for FID.
        max_items: stop accepting rows after this many (None = unlimited).
    """

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features = None
        self.all_features = []    # list of float32 [n, D] numpy arrays
        self.raw_mean = None      # float64 [D] torch tensor: sum of x
        self.raw_cov = None       # float64 [D, D] torch tensor: sum of x^T x

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append_torch(self, x: torch.Tensor):
        """Add rows [N, D] (any device); rows beyond max_items are dropped."""
        assert x.ndim == 2, f'expected [N, D], got {list(x.shape)}'
        if self.num_features is None:
            self.num_features = x.shape[1]
        assert x.shape[1] == self.num_features
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        if x.shape[0] == 0:
            return
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x.to(torch.float32).cpu().numpy())
        if self.capture_mean_cov:
            x64 = x.to(torch.float64)  # on the device: float64 GEMM is cheap on GPUs, exact enough on CPUs
            if self.raw_mean is None:
                self.raw_mean = torch.zeros(self.num_features, dtype=torch.float64, device=x.device)
                self.raw_cov = torch.zeros(self.num_features, self.num_features, dtype=torch.float64, device=x.device)
            self.raw_mean += x64.sum(dim=0)
            self.raw_cov += x64.T @ x64

    def append(self, x):
        """Add rows from a numpy array [N, D]."""
        self.append_torch(torch.as_tensor(np.asarray(x, dtype=np.float32)))

    def get_all(self) -> np.ndarray:
        """All captured rows as float32 [N, D]."""
        assert self.capture_all
        if not self.all_features:
            return np.zeros([0, self.num_features or 0], np.float32)
        return np.concatenate(self.all_features, axis=0)

    def get_all_torch(self) -> torch.Tensor:
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        """(mean [D], covariance [D, D]) in float64; covariance divides by N (upstream's definition)."""
        assert self.capture_mean_cov and self.num_items > 0, 'no statistics captured'
        n = self.num_items
        mean = (self.raw_mean / n).cpu().numpy()
        cov = (self.raw_cov / n).cpu().numpy() - np.outer(mean, mean)
        return mean, cov

    # Serialisation: plain numpy arrays in an .npz (loaded with allow_pickle=False, so a cache file can
    # never execute code).

    def save(self, path):
        arrays = dict(
            format_version=np.int64(CACHE_FORMAT_VERSION),
            capture_all=np.bool_(self.capture_all), capture_mean_cov=np.bool_(self.capture_mean_cov),
            max_items=np.int64(-1 if self.max_items is None else self.max_items),
            num_items=np.int64(self.num_items), num_features=np.int64(self.num_features or 0))
        if self.capture_all:
            arrays['all_features'] = self.get_all()
        if self.capture_mean_cov:
            arrays['raw_mean'] = self.raw_mean.cpu().numpy()
            arrays['raw_cov'] = self.raw_cov.cpu().numpy()
        with util.atomic_open(path, 'wb') as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as data:
            if int(data['format_version']) != CACHE_FORMAT_VERSION:
                raise ValueError(f'{path}: unsupported statistics format')
            max_items = int(data['max_items'])
            obj = cls(capture_all=bool(data['capture_all']), capture_mean_cov=bool(data['capture_mean_cov']),
                      max_items=None if max_items < 0 else max_items)
            obj.num_items = int(data['num_items'])
            obj.num_features = int(data['num_features'])
            if obj.capture_all:
                obj.all_features = [data['all_features']]
            if obj.capture_mean_cov:
                obj.raw_mean = torch.from_numpy(data['raw_mean'])
                obj.raw_cov = torch.from_numpy(data['raw_cov'])
        return obj

# ----------------------------------------------------------------------------
# Multi-process helpers (no-ops in a single process).


def _distributed(opts) -> bool:
    return opts.num_gpus > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_interleaved(x: torch.Tensor, opts) -> torch.Tensor:
    """All ranks' [B, D] batches as [k*B, D], row i*k + r coming from rank r (upstream's item order)."""
    if not _distributed(opts):
        return x
    parts = [torch.empty_like(x) for _ in range(opts.num_gpus)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)


def broadcast_object(obj, opts):
    """Rank 0's Python object on every rank."""
    if not _distributed(opts):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]

# ----------------------------------------------------------------------------
# Real images.


def dataset_cache_file(opts, detector, dataset, max_items, stats_kwargs):
    """Cache path for the real statistics (None if the dataset cannot hash its content).

    The key covers everything that changes the statistics.

    The dataset's path is deliberately *not* in the key and its content hash is: a dataset rebuilt at
    the same path gets new statistics, and a copy moved elsewhere reuses them.
    """
    if not hasattr(dataset, 'content_hash'):
        if opts.rank == 0:
            print(f'Metrics: {type(dataset).__name__} has no content_hash(); real statistics are not cached',
                  file=sys.stderr, flush=True)
        return None
    kwargs = {k: v for k, v in opts.dataset_kwargs.items() if k != 'path'}
    key = dict(version=CACHE_FORMAT_VERSION, detector_sha256=detector.sha256, dataset_kwargs=kwargs,
               content_hash=dataset.content_hash(), num_items=max_items, stats_kwargs=stats_kwargs)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode('utf-8')).hexdigest()[:32]
    name = ''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in str(dataset.name))
    return util.make_cache_dir_path('gan-metrics', f'{name}-{detector.name.replace(":", "_")}-{digest}.npz')


def _num_workers(num_items):
    # Worker start-up costs ~1 s each: only worth it for real-size datasets.
    return 0 if num_items < 1000 else min(3, max((os.cpu_count() or 1) - 1, 0))


def _close(dataset):
    if hasattr(dataset, 'close'):  # ImageFolderDataset keeps its zip file open
        dataset.close()


def _image_batch_to_uint8(images) -> torch.Tensor:
    images = torch.as_tensor(images)
    assert images.dtype == torch.uint8, f'the dataset must yield uint8 images, got {images.dtype}'
    return images


def compute_feature_stats_for_dataset(opts, detector, max_items=None, batch_size=None, data_loader_kwargs=None,
                                      **stats_kwargs) -> FeatureStats:
    """Features of the real images (first `max_items`, all if None), cached on disk when opts.cache.

    Args:
        opts: MetricOptions.
        detector: Detector.
        max_items: number of real images (None = all).
        batch_size: images per detector call per rank (default opts.batch_size).
        data_loader_kwargs: overrides for torch.utils.data.DataLoader.
        **stats_kwargs: FeatureStats flags (capture_all / capture_mean_cov).

    Returns:
        FeatureStats over the real images (identical on every rank).
    """
    batch_size = batch_size or opts.batch_size
    dataset = construct_dataset(opts.dataset_kwargs)
    num_items = len(dataset) if max_items is None else min(len(dataset), max_items)
    if num_items == 0:
        raise ValueError(f'dataset {opts.dataset_kwargs.get("path")} has no images')

    # Reuse cached statistics (rank 0 decides, everyone follows).
    cache_file = None
    if opts.cache:
        cache_file = broadcast_object(
            dataset_cache_file(opts, detector, dataset, num_items, stats_kwargs) if opts.rank == 0 else None, opts)
        if cache_file is not None and broadcast_object(os.path.isfile(cache_file) if opts.rank == 0 else None, opts):
            _close(dataset)
            return FeatureStats.load(cache_file)

    # Each rank takes items (i*k + r) mod N so every rank runs the same number of batches.
    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    num_per_rank = (num_items - 1) // opts.num_gpus + 1
    subset = [(i * opts.num_gpus + opts.rank) % num_items for i in range(num_per_rank)]
    loader_kwargs = dict(num_workers=_num_workers(num_items), pin_memory=opts.device.type == 'cuda')
    loader_kwargs.update(data_loader_kwargs or {})
    if loader_kwargs['num_workers'] > 0:
        loader_kwargs.setdefault('prefetch_factor', 2)
    loader = torch.utils.data.DataLoader(dataset=dataset, sampler=subset, batch_size=batch_size, **loader_kwargs)
    progress = Progress(opts, 'real features', num_items)
    for images, _labels in loader:
        images = _image_batch_to_uint8(images)
        feats = detector.features(images.to(opts.device, non_blocking=True))
        stats.append_torch(gather_interleaved(feats, opts))
        progress.update(stats.num_items)
    progress.close()
    _close(dataset)

    if cache_file is not None and opts.rank == 0:
        stats.save(cache_file)
    return stats

# ----------------------------------------------------------------------------
# Generated images.


def quantize_images(img: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 exactly as upstream: (x * 127.5 + 128).clamp(0, 255), truncated.

    The truncating cast after +128 rounds half up: uint8 = floor(x * 127.5 + 127.5 + 0.5).
    """
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def _label_sampler(opts, dataset, rng):
    """Function n -> [n, c_dim] float tensor of labels of random dataset items (upstream's sampling)."""
    def sample(n):
        idx = rng.integers(len(dataset), size=n)
        labels = np.stack([dataset.get_label(int(i)) for i in idx]).astype(np.float32)
        return torch.from_numpy(labels).to(opts.device)
    return sample


def compute_feature_stats_for_generator(opts, detector, max_items, batch_size=None, batch_gen=None,
                                        use_probabilities=False, **stats_kwargs) -> FeatureStats:
    """Features of `max_items` generated images.

    G runs without autograd on the device with `batch_gen` images per call (default: the whole
    detector batch, 64; upstream used 4, which leaves a large GPU mostly idle). Labels of conditional generators are
    those of random dataset items, as upstream.

    Returns:
        FeatureStats over max_items generated images (identical on every rank).
    """
    assert max_items is not None and max_items > 0, 'the number of generated images must be positive'
    batch_size = batch_size or opts.batch_size
    batch_gen = batch_gen or batch_size
    G = opts.G
    assert G is not None, 'no generator given'

    c_dim = getattr(G, 'c_dim', 0)
    z_gen = opts.torch_generator(salt=1)
    if c_dim > 0:
        dataset = construct_dataset(opts.dataset_kwargs)
        sample_labels = _label_sampler(opts, dataset, opts.numpy_rng(salt=2))
    else:
        sample_labels = lambda n: torch.zeros([n, 0], device=opts.device)  # noqa: E731

    stats = FeatureStats(max_items=max_items, **stats_kwargs)
    progress = Progress(opts, 'generated features', max_items)
    with torch.no_grad():  # (not inference_mode: the float64 sums are updated in place later)
        while not stats.is_full():
            # The last batch only makes what is still missing (same count on every rank).
            n = min(batch_size, -(-(max_items - stats.num_items) // opts.num_gpus))
            images = []
            for start in range(0, n, batch_gen):
                k = min(batch_gen, n - start)
                z = torch.randn([k, G.z_dim], device=opts.device, generator=z_gen)
                img = G(z=z, c=sample_labels(k), **opts.G_kwargs)
                images.append(quantize_images(img))
            images = torch.cat(images)
            feats = detector.probabilities(images) if use_probabilities else detector.features(images)
            stats.append_torch(gather_interleaved(feats, opts))
            progress.update(stats.num_items)
    progress.close()
    return stats


def prepare_generator(G, device):
    """Deep copy of G on `device`, in eval mode, without gradients (upstream evaluates a copy of G_ema)."""
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    return G
