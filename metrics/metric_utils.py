"""Shared machinery of the metrics: options, feature statistics, the real-statistics cache, and the
loops that push real and generated images through a detector.

Upstream semantics kept:
- real images come uint8 from the dataset; rank r of k takes items (i*k + r) mod N;
- generated images are quantised as (x * 127.5 + 128).clamp(0, 255).to(uint8) (truncating cast);
- mean/covariance are accumulated as float64 sums of x and x^T x; cov = E[x x^T] - mu mu^T (divide by N);
- features gathered across ranks are interleaved in item order.
Changes: the real-statistics cache is keyed by the detector's sha256, the statistics
options, the item count and the dataset's content_hash() (not its path), and stored as .npz.
Statistics and kept features stay on the device (no host read per batch); the generator runs in big
calls fed by a LatentStream (values independent of the call size), overlapped with the detector on CUDA.
"""

import copy
import hashlib
import json
import os
import sys

import numpy as np
import torch

from dnnlib import util
from torch_utils import op_trace
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
        shared: a SharedFeatures reused by every metric of one evaluation, or None (each metric runs its
            own feature passes).
        training_set_kwargs: the generator's training set, where it differs from dataset_kwargs (the
            metrics about training images, memorisation and pull, read it); None = dataset_kwargs.
    """

    def __init__(self, G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None,
                 progress=None, cache=True, detector=None, seed=None, batch_size=64, shared=None,
                 training_set_kwargs=None):
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
        self.shared = shared
        self.training_set_kwargs = util.EasyDict(training_set_kwargs) if training_set_kwargs else None

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
# One feature pass for several metrics.


class SharedFeatures:
    """Feature statistics (and results derived from them) computed once per evaluated snapshot.

    calc_metrics.py and train.py hand one of these to every metric of a snapshot, so FID, PRDC,
    memorisation and pull read the same real and generated features from a single pass. Shared
    statistics keep both every row and the float64 sums: any metric can use them, and the sums are
    accumulated in the same order as a metric's own pass, so the values do not change.
    """

    STATS_KWARGS = dict(capture_all=True, capture_mean_cov=True)

    def __init__(self):
        self._items = {}

    def get(self, key, make):
        """The value stored under `key`, made by make() the first time."""
        if key not in self._items:
            self._items[key] = make()
        return self._items[key]


def _shared_key(kind, opts, detector, max_items, *extra):
    return (kind, detector.sha256, max_items, json.dumps(opts.dataset_kwargs, sort_keys=True, default=str)) + extra

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


DEVICE_STORE_MAX_BYTES = 4 << 30   # kept rows beyond this size wait in pinned host memory, not on the GPU


class FeatureStats:
    """Running statistics of feature vectors, kept on the features' device (no host transfer per batch).

    Args:
        capture_all: keep every feature row (float32), for KID/PR/IS and FID's bootstrap.
        capture_mean_cov: accumulate float64 sum x and sum x^T x, for FID.
        max_items: stop accepting rows after this many (None = unlimited).
    """

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features = None
        self.raw_mean = None      # float64 [D] torch tensor: sum of x
        self.raw_cov = None       # float64 [D, D] torch tensor: sum of x^T x
        self._rows = None         # float32 [max_items, D] row store (with max_items)
        self._chunks = []         # float32 row batches (without max_items)
        self._pending_copy = None  # CUDA device whose async copies into a pinned host store are in flight

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append_torch(self, x: torch.Tensor):
        """Add rows [N, D] (any device; kept there); rows beyond max_items are dropped. Never syncs."""
        assert x.ndim == 2, f'expected [N, D], got {list(x.shape)}'
        if self.num_features is None:
            self.num_features = x.shape[1]
        assert x.shape[1] == self.num_features
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        if x.shape[0] == 0:
            return
        if self.capture_all:
            self._keep_rows(x)
        self.num_items += x.shape[0]
        if self.capture_mean_cov:
            x64 = x.to(torch.float64)  # on the device: float64 GEMM is cheap on GPUs, exact enough on CPUs
            if self.raw_mean is None:
                self.raw_mean = torch.zeros(self.num_features, dtype=torch.float64, device=x.device)
                self.raw_cov = torch.zeros(self.num_features, self.num_features, dtype=torch.float64, device=x.device)
            self.raw_mean += x64.sum(dim=0)
            self.raw_cov += x64.T @ x64  # (not addmm_: the separate sum keeps upstream's rounding)

    def _keep_rows(self, x):
        if self.max_items is None:
            self._chunks.append(x.to(torch.float32, copy=True))
            return
        if self._rows is None:
            self._rows = _row_store(self.max_items, x)
        if self._rows.device != x.device:
            self._pending_copy = x.device  # a non-blocking copy into pinned memory: wait before reading
        self._rows[self.num_items:self.num_items + x.shape[0]].copy_(x, non_blocking=True)

    def append(self, x):
        """Add rows from a numpy array [N, D]."""
        self.append_torch(torch.as_tensor(np.asarray(x, dtype=np.float32)))

    def get_all_torch(self) -> torch.Tensor:
        """All captured rows as float32 [N, D], where they are kept (the device, or host for huge sets)."""
        assert self.capture_all
        if self._pending_copy is not None:
            torch.cuda.synchronize(self._pending_copy)
            self._pending_copy = None
        if self._rows is not None:
            return self._rows[:self.num_items]
        if not self._chunks:
            return torch.zeros([0, self.num_features or 0], dtype=torch.float32)
        return torch.cat(self._chunks)

    def get_all(self) -> np.ndarray:
        """All captured rows as a float32 numpy array [N, D] (one transfer from the device)."""
        return self.get_all_torch().cpu().numpy()

    def get_mean_cov_torch(self):
        """(mean [D], covariance [D, D]) as float64 tensors on the statistics' device; divides by N (upstream)."""
        assert self.capture_mean_cov and self.num_items > 0, 'no statistics captured'
        mean = self.raw_mean / self.num_items
        return mean, self.raw_cov / self.num_items - torch.outer(mean, mean)

    def get_mean_cov(self):
        """(mean [D], covariance [D, D]) as float64 numpy arrays (get_mean_cov_torch, on the host)."""
        mean, cov = self.get_mean_cov_torch()
        return mean.cpu().numpy(), cov.cpu().numpy()

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
                obj._rows = torch.from_numpy(data['all_features'])
            if obj.capture_mean_cov:
                obj.raw_mean = torch.from_numpy(data['raw_mean'])
                obj.raw_cov = torch.from_numpy(data['raw_cov'])
        return obj


def _row_store(max_items, x) -> torch.Tensor:
    """Preallocated float32 [max_items, D] store for rows like x: on x's device unless it would be huge."""
    shape = [max_items, x.shape[1]]
    if x.device.type != 'cuda' or max_items * x.shape[1] * 4 <= DEVICE_STORE_MAX_BYTES:
        return torch.empty(shape, dtype=torch.float32, device=x.device)
    return torch.empty(shape, dtype=torch.float32, pin_memory=True)  # filled by async copies, read once

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
    if not isinstance(images, torch.Tensor):  # (the default collate already gives a tensor: no extra call)
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
    if opts.shared is not None:
        key = _shared_key('real', opts, detector, max_items)
        return opts.shared.get(key, lambda: _dataset_stats(opts, detector, max_items, batch_size, data_loader_kwargs,
                                                           SharedFeatures.STATS_KWARGS))
    return _dataset_stats(opts, detector, max_items, batch_size, data_loader_kwargs, stats_kwargs)


def _dataset_stats(opts, detector, max_items, batch_size, data_loader_kwargs, stats_kwargs):
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
        _save_to_cache(stats, cache_file)
    return stats


_cache_warned = set()  # cache folders already reported as unwritable (one warning per process each)


def _save_to_cache(stats, cache_file):
    """The cache only saves time: a full or read-only cache folder costs one warning, never the metric."""
    try:
        stats.save(cache_file)
    except OSError as e:
        folder = os.path.dirname(cache_file)
        if folder not in _cache_warned:
            _cache_warned.add(folder)
            print(f'Warning: metric cache {folder}: {util.os_error_reason(e)}; real statistics are not cached '
                  f'(DNNLIB_CACHE_DIR chooses another folder)', file=sys.stderr, flush=True)

# ----------------------------------------------------------------------------
# Generated images.


def quantize_images(img: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 exactly as upstream: (x * 127.5 + 128).clamp(0, 255), truncated.

    The truncating cast after +128 rounds half up: uint8 = floor(x * 127.5 + 127.5 + 0.5).
    """
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


LATENT_CHUNK = 64               # z and labels are drawn this many rows at a time, whatever the batch sizes
MAX_BATCH_GEN = 1024            # images per G call, at most
GEN_PIXELS_PER_CALL = 1 << 26   # ~256 images of 512x512 per G call: enough work to fill a large GPU
GEN_MEMORY_FRACTION = 0.4       # of the free GPU memory, for one G call (the detector and a queued batch need room)


class GeneratorCallCost:
    """Per-call cost of G as a function of its batch size N, measured by running G on the meta device.

    Each custom-op launch's element count and the peak of live bytes are affine in N (a + b*N); two
    meta runs (N = 1 and 2) give both coefficients. Nothing is allocated and G is not touched: the run
    uses meta copies of its parameters. The memory figure is an upper bound: on the meta device every
    block computes in float32, while fp16 blocks on a GPU hold half as many bytes.

    Args:
        G: the generator.
        G_kwargs: keyword arguments of G's calls (noise_mode, truncation_psi, ...).
    """

    def __init__(self, G, G_kwargs=None):
        runs = [self._trace(G, n, G_kwargs or {}) for n in (1, 2)]
        self.launch_numel = [(2 * one - two, two - one) for one, two in zip(runs[0][0], runs[1][0])]
        self.peak_bytes = (2 * runs[0][1] - runs[1][1], runs[1][1] - runs[0][1])

    @staticmethod
    def _trace(G, n, G_kwargs):
        state = op_trace.meta_state(G)
        z = torch.empty([n, G.z_dim], device='meta')
        c = torch.empty([n, getattr(G, 'c_dim', 0)], device='meta')
        with torch.no_grad(), op_trace.OpTrace() as trace:
            img = torch.func.functional_call(G, state, (z, c), G_kwargs)
            del img
        numels = [int(np.prod(shape)) for launch in trace.launches
                  for shape in (launch['in_shape'], launch['out_shape'])]
        return numels, trace.peak_bytes

    def max_batch(self, max_numel, max_bytes):
        """The largest N whose launches all stay within max_numel elements and whose peak fits max_bytes (>= 0)."""
        limits = [(max_numel - a) // b for a, b in self.launch_numel if b > 0]
        a, b = self.peak_bytes
        if b > 0:
            limits.append(int(max_bytes - a) // b)
        return max(0, min(limits, default=MAX_BATCH_GEN))


_call_costs = dict()  # (class, constructor arguments, G_kwargs) -> GeneratorCallCost


def generator_call_cost(G, G_kwargs=None):
    """GeneratorCallCost of G, measured once per architecture (training evaluates the same G every snapshot).

    Networks that record their constructor arguments (torch_utils.persistence) are keyed by them; others
    are measured every time.
    """
    init_kwargs = getattr(G, 'init_kwargs', None)
    if init_kwargs is None:
        return GeneratorCallCost(G, G_kwargs)
    key = (type(G).__qualname__, repr(getattr(G, 'init_args', ())), repr(init_kwargs),
           repr(sorted((G_kwargs or {}).items())))
    if key not in _call_costs:
        _call_costs[key] = GeneratorCallCost(G, G_kwargs)
    return _call_costs[key]


def choose_batch_gen(G, device, batch_size, G_kwargs=None) -> int:
    """Images per generator call: the detector batch on CPUs; on CUDA, the most that fits the kernels and memory.

    On CUDA the batch is the smallest of MAX_BATCH_GEN, a pixel budget (GEN_PIXELS_PER_CALL), what keeps
    every tensor handed to a custom op within the kernels' 32-bit element count, and what fits
    GEN_MEMORY_FRACTION of the free memory; the last two come from G's real layer sizes (GeneratorCallCost).
    When that is below the detector batch, the result is the largest divisor of batch_size that fits, so
    whole G calls make up each detector batch (the LatentStream keeps the values independent of it).

    Args:
        G: the generator.
        device: torch device the metric runs on.
        batch_size: images per detector call.
        G_kwargs: keyword arguments of G's calls.

    Returns:
        batch_gen: a positive multiple of batch_size, or a divisor of it.
    """
    device = torch.device(device)
    if device.type != 'cuda':
        return batch_size  # CPUs gain nothing from huge calls; this keeps today's G calls (and values)
    pixels = getattr(G, 'img_resolution', 256) ** 2
    free_bytes, _total = torch.cuda.mem_get_info(device)
    fits = generator_call_cost(G, G_kwargs).max_batch(op_trace.INT_MAX, free_bytes * GEN_MEMORY_FRACTION)
    n = max(1, min(GEN_PIXELS_PER_CALL // pixels, fits, MAX_BATCH_GEN))
    if n >= batch_size:
        return n // batch_size * batch_size
    return max(d for d in range(1, n + 1) if batch_size % d == 0)


def _chunk_sizes(total, chunk):
    """[chunk, chunk, ..., remainder]: sizes that add up to total."""
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def _draw_labels(opts, G, total) -> torch.Tensor:
    """[total, c_dim] labels of random dataset items (upstream's sampling), on the device in one transfer.

    Items are drawn LATENT_CHUNK at a time from the (seed, rank)-seeded numpy generator, as the G calls
    of 64 images used to draw them, so seeded runs keep their labels.
    """
    c_dim = getattr(G, 'c_dim', 0)
    if c_dim == 0:
        return torch.zeros([total, 0], device=opts.device)
    dataset = construct_dataset(opts.dataset_kwargs)
    rng = opts.numpy_rng(salt=2)
    idx = np.concatenate([rng.integers(len(dataset), size=k) for k in _chunk_sizes(total, LATENT_CHUNK)])
    labels = np.stack([dataset.get_label(int(i)) for i in idx]).astype(np.float32)
    _close(dataset)
    return torch.from_numpy(labels).to(opts.device)


class LatentStream:
    """The (z, c) rows one rank feeds its generator, independent of how they are batched.

    z is drawn in fixed chunks of LATENT_CHUNK rows from the metric's seeded generator (or the global
    RNG without a seed) and handed out in any batch size, so batch_gen changes G's calls but not its
    inputs. Labels are drawn up front (one host-to-device copy). Nothing here reads the device.

    Args:
        opts: MetricOptions (device, seed, dataset for labels).
        G: the generator (z_dim, c_dim).
        total: rows this rank will take.
        keep: keep every z handed out (total x z_dim floats on the device), so that rows can be
            generated again (the memorisation metric shows its most memorised samples).
    """

    def __init__(self, opts, G, total, keep=False):
        self.z_dim, self.device, self.total = G.z_dim, opts.device, total
        self.generator = opts.torch_generator(salt=1)
        self.labels = _draw_labels(opts, G, total)
        self.drawn = self.served = 0
        self._spare = None  # drawn z rows not handed out yet
        self._kept = [] if keep else None

    def _next_chunk(self):
        k = min(LATENT_CHUNK, self.total - self.drawn)
        assert k > 0, 'the latent stream is exhausted'
        self.drawn += k
        return torch.randn([k, self.z_dim], device=self.device, generator=self.generator)

    def take(self, k):
        """The next k rows as (z [k, z_dim], c [k, c_dim])."""
        parts, need = [], k
        while need > 0:
            chunk = self._spare if self._spare is not None else self._next_chunk()
            parts.append(chunk[:need])
            self._spare = chunk[need:] if chunk.shape[0] > need else None
            need -= parts[-1].shape[0]
        c = self.labels[self.served:self.served + k]
        self.served += k
        z = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self._kept is not None:
            self._kept.append(z)
        return z, c

    def rows(self, index):
        """(z, c) of the rows handed out at positions `index` (a kept stream only)."""
        assert self._kept is not None, 'this stream keeps no rows'
        return torch.cat(self._kept)[index], self.labels[index]


class SideStream:
    """Work launched on a CUDA side stream and handed to the current stream when it is used.

    The producer runs ahead on `side`; the consumer's stream waits for it before each use, and each
    handed-over tensor is recorded on the consumer's stream so the caching allocator does not give its
    memory to the producer while the consumer still reads it.
    """

    def __init__(self, device):
        self.main = torch.cuda.current_stream(device)
        self.side = torch.cuda.Stream(device)
        self.side.wait_stream(self.main)  # G's weights and the labels were written on the main stream

    def launch(self, fn):
        with torch.cuda.stream(self.side):
            return fn()

    def hand_over(self, t):
        self.main.wait_stream(self.side)
        t.record_stream(self.main)
        return t


def overlapped(make, sizes, streams=None):
    """Yield make(k) for k in sizes; with `streams` (a SideStream), batch i+1 is launched before batch i is yielded.

    Args:
        make: function k -> tensor (a batch of k images).
        sizes: batch sizes, in order.
        streams: None (plain loop: CPUs, meta) or a SideStream-like object with launch(fn) and hand_over(t).

    Yields:
        The batches, in order, ready on the caller's stream.
    """
    if streams is None:
        for k in sizes:
            yield make(k)
        return
    pending = streams.launch(lambda: make(sizes[0])) if sizes else None
    for i in range(len(sizes)):
        ready = streams.hand_over(pending)
        # Queue the next batch before the caller queues its work on this one: the two then overlap.
        pending = streams.launch(lambda k=sizes[i + 1]: make(k)) if i + 1 < len(sizes) else None
        yield ready


def _generate_uint8(G, latents, k, G_kwargs, per_call):
    """k images as uint8, from G calls of at most per_call images (joined when k is larger)."""
    parts = []
    for n in _chunk_sizes(k, per_call):
        z, c = latents.take(n)
        parts.append(quantize_images(G(z=z, c=c, **G_kwargs)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def compute_feature_stats_for_generator(opts, detector, max_items, batch_size=None, batch_gen=None,
                                        use_probabilities=False, **stats_kwargs) -> FeatureStats:
    """Features of `max_items` generated images, accumulated on the device with no host sync per batch.

    G runs without autograd with `batch_gen` images per call (default choose_batch_gen: the detector
    batch on CPUs, hundreds of images on a large GPU; upstream used 4). Its inputs come from a
    LatentStream, so they do not depend on batch_gen. The detector sees batches of `batch_size` in
    the same order whatever batch_gen is. On CUDA the next G call runs on a side stream while the
    detector works on the current one. Labels of conditional generators are those of random dataset
    items, as upstream.

    Args:
        opts: MetricOptions (opts.G is the generator).
        detector: Detector (features, or probabilities when use_probabilities).
        max_items: number of generated images (over all ranks).
        batch_size: images per detector call per rank (default opts.batch_size).
        batch_gen: images per G call (default choose_batch_gen); above batch_size it is rounded up to a
            multiple of it, below it whole G calls are joined into each detector batch.
        use_probabilities: collect detector.probabilities (the Inception Score) instead of features.
        **stats_kwargs: FeatureStats flags (capture_all / capture_mean_cov).

    Returns:
        FeatureStats over max_items generated images (identical on every rank), on the device.
    """
    assert max_items is not None and max_items > 0, 'the number of generated images must be positive'
    if opts.shared is not None:
        key = _shared_key('generated', opts, detector, max_items, use_probabilities)
        return opts.shared.get(key, lambda: _generator_stats(opts, detector, max_items, batch_size, batch_gen,
                                                             use_probabilities, SharedFeatures.STATS_KWARGS,
                                                             keep_latents=opts.num_gpus == 1))
    return _generator_stats(opts, detector, max_items, batch_size, batch_gen, use_probabilities, stats_kwargs)


def regenerate(opts, stats, index):
    """uint8 images [k, C, H, W] of the generated rows `index` of a shared single-process pass, or None.

    The rows' z and labels are those of the pass; noise inputs are drawn anew (noise_mode='random'
    alters only fine detail), so the images are the samples the features came from, up to that noise.
    """
    latents = getattr(stats, 'latents', None)
    if latents is None or opts.G is None:
        return None
    z, c = latents.rows(torch.as_tensor(index, device=opts.device))
    devices = [opts.device] if opts.device.type == 'cuda' else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=opts.seed is not None):
        if opts.seed is not None:  # seeded evaluations draw the same noise every time
            torch.manual_seed(int(np.random.SeedSequence([opts.seed, opts.rank, 4]).generate_state(1)[0]))
        return quantize_images(opts.G(z=z, c=c, **opts.G_kwargs))


def _generator_stats(opts, detector, max_items, batch_size, batch_gen, use_probabilities, stats_kwargs,
                     keep_latents=False):
    G = opts.G
    assert G is not None, 'no generator given'
    batch_size = batch_size or opts.batch_size
    per_call = batch_gen or choose_batch_gen(G, opts.device, batch_size, opts.G_kwargs)
    batch_gen = -(-per_call // batch_size) * batch_size  # images per queued batch: whole detector batches
    per_call = per_call if per_call < batch_size else batch_gen
    total = -(-max_items // opts.num_gpus)  # per rank; the surplus of the last gathered batch is dropped
    latents = LatentStream(opts, G, total, keep=keep_latents)
    streams = SideStream(opts.device) if opts.device.type == 'cuda' else None
    extract = detector.probabilities if use_probabilities else detector.features

    stats = FeatureStats(max_items=max_items, **stats_kwargs)
    progress = Progress(opts, 'generated features', max_items)
    with torch.no_grad():  # (not inference_mode: the float64 sums are updated in place later)
        batches = overlapped(lambda k: _generate_uint8(G, latents, k, opts.G_kwargs, per_call),
                             _chunk_sizes(total, batch_gen), streams)
        for images in batches:
            for part in images.split(batch_size):
                stats.append_torch(gather_interleaved(extract(part), opts))
            progress.update(stats.num_items)
    progress.close()
    if keep_latents:
        stats.latents = latents  # (regenerate() reads it)
    return stats


def prepare_generator(G, device):
    """Deep copy of G on `device`, in eval mode, without gradients (upstream evaluates a copy of G_ema)."""
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    return G
