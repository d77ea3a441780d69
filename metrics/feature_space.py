"""What the Inception-space metrics (PRDC, memorisation, pull) share: the features of one pass, the
nearest training image of every generated image, and bootstrap intervals of per-sample shares.

Intervals follow FID's: the generated rows are resampled with frechet_inception_distance's fixed-seed
draw counts, the real (training) set held fixed.
"""

import copy

import torch

from dnnlib import util
from . import frechet_inception_distance as fid_lib
from . import metric_utils, nearest


class Features:
    """Real and generated Inception pool features of one evaluation, float64 on the metric's device.

    Attributes:
        real, gen: [N, D] and [M, D] float64 tensors (row i of real is dataset item i).
        real_stats, gen_stats: the FeatureStats they came from (float64 sums for FIDs).
        num_gen: M.
    """

    def __init__(self, real_stats, gen_stats, device, what):
        self.real_stats, self.gen_stats, self.num_gen = real_stats, gen_stats, gen_stats.num_items
        self.real = nearest.check_features(real_stats.get_all_torch().to(device), f'{what}: the real set')
        self.gen = nearest.check_features(gen_stats.get_all_torch().to(device), f'{what}: the generated images')

    def require(self, min_real, min_gen, what):
        """ValueError naming the metric unless there are at least min_real real and min_gen generated images."""
        for rows, least, part in ((self.real, min_real, 'the real set'), (self.gen, min_gen, 'the generated images')):
            if rows.shape[0] < least:
                raise ValueError(f'{what}: {part}: needs at least {least} images, got {rows.shape[0]}')
        return self


def training_options(opts):
    """A copy of opts whose real set is the generator's training set (all images, no x-flip)."""
    if opts.training_set_kwargs is None:
        return opts
    opts = copy.copy(opts)
    opts.dataset_kwargs = util.EasyDict(opts.training_set_kwargs, max_size=None, xflip=False)
    return opts


def features(opts, num_gen, min_real, min_gen, what, training=False):
    """Features of all real images and num_gen generated ones (from opts.shared's pass when there is one).

    Args:
        opts: MetricOptions.
        num_gen: generated images.
        min_real, min_gen: fewest images each side needs (k + 1 for a k-NN radius); fewer is a ValueError.
        what: the metric's name, for the error lines.
        training: read the generator's training set (opts.training_set_kwargs) as the real set; the
            generated images are the same either way.
    """
    detector = opts.get_detector()
    real = metric_utils.compute_feature_stats_for_dataset(
        opts=training_options(opts) if training else opts, detector=detector, capture_all=True,
        capture_mean_cov=True, max_items=None)
    gen = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector=detector, capture_all=True, capture_mean_cov=True, max_items=num_gen)
    make = lambda: Features(real, gen, opts.device, what)  # noqa: E731
    feats = make() if opts.shared is None else opts.shared.get(('float64-features', id(real), id(gen)), make)
    return feats.require(min_real, min_gen, what)


def nearest_training(opts, feats):
    """(distances [M, 2], indices [M, 2]): each generated image's two nearest training images.

    Memorisation and pull both need it: with a SharedFeatures it is computed once per evaluation.
    """
    make = lambda: nearest.knn(feats.gen, feats.real, 2)  # noqa: E731
    if opts.shared is None:
        return make()
    return opts.shared.get(('nearest-training', feats.num_gen, id(feats.gen_stats)), make)


def bootstrap_weights(n, device, replicates=fid_lib.BOOTSTRAP_REPLICATES, seed=fid_lib.BOOTSTRAP_SEED):
    """float64 [R, n] draw counts of FID's bootstrap, on `device` (one transfer)."""
    return torch.from_numpy(fid_lib.bootstrap_counts(n, replicates, seed).astype('float64')).to(device)


def share_interval(per_row, weights):
    """(mean of per_row, its bootstrap interval): per_row [n] values of the generated rows, weights [R, n]."""
    per_row = per_row.to(torch.float64)
    point = float(per_row.mean())
    return point, fid_lib.interval(point, weights @ per_row / per_row.shape[0], bounds=(0.0, 1.0))


def fid_to(feats, rows):
    """(FID of the generated images against the real rows selected by `rows`, its bootstrap interval)."""
    part = feats.real[rows]
    mu = part.mean(dim=0)
    centred = part - mu
    sigma = centred.T @ centred / part.shape[0]  # population covariance, as FID's statistics
    mu_gen, sigma_gen = feats.gen_stats.get_mean_cov_torch()
    mu_gen, sigma_gen = mu_gen.to(mu.device), sigma_gen.to(mu.device)
    # A part smaller than the dimension (a study set's 200 generated images against 2048 features) has
    # the exact factor B = centred^T / sqrt(n), B B^T = sigma: the traces then need n x n eigenproblems.
    factor = centred.T / part.shape[0] ** 0.5 if part.shape[0] <= part.shape[1] else fid_lib.psd_factor(sigma)
    point = float(fid_lib.frechet_distance_torch(mu, sigma, mu_gen, sigma_gen, factor1=factor))
    return point, fid_lib.fid_uncertainty(point, feats.gen, mu, sigma, factor_real=factor)
