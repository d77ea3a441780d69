"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 3).

KID is the unbiased estimator of the squared MMD with the cubic polynomial kernel
k(a, b) = (a.b / d + 1)^3, averaged over random subsets (upstream's choice: 100 subsets of
m = min(N_real, N_gen, 1000) rows drawn without replacement).
"""

import numpy as np

from . import metric_utils


def polynomial_mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 between samples x [m, d] and y [m, d] with k(a, b) = (a.b/d + 1)^3.

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m, d = x.shape
    assert y.shape == (m, d), 'both subsets must have the same shape'
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_distance(real_features, gen_features, num_subsets=100, max_subset_size=1000, rng=None) -> float:
    """KID: mean over `num_subsets` random subset pairs of the unbiased polynomial MMD^2.

    Args:
        real_features: [N_r, d] features.
        gen_features: [N_g, d] features.
        num_subsets: number of subset pairs.
        max_subset_size: subset size cap; m = min(N_r, N_g, max_subset_size).
        rng: numpy Generator (default: a fresh unseeded one, like upstream's global np.random).

    Returns:
        KID as a float.
    """
    rng = rng if rng is not None else np.random.default_rng()
    m = min(len(real_features), len(gen_features), max_subset_size)
    if m < 2:
        raise ValueError('KID needs at least 2 real and 2 generated samples')
    total = 0.0
    for _ in range(num_subsets):
        x = gen_features[rng.choice(len(gen_features), m, replace=False)]
        y = real_features[rng.choice(len(real_features), m, replace=False)]
        total += polynomial_mmd2_unbiased(x, y)
    return total / num_subsets


def compute_kid(opts, max_real, num_gen, num_subsets, max_subset_size) -> float:
    """KID between the real set (first `max_real` items) and `num_gen` generated images."""
    detector = opts.get_detector()
    real = metric_utils.compute_feature_stats_for_dataset(
        opts=opts, detector=detector, capture_all=True, max_items=max_real).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector=detector, capture_all=True, max_items=num_gen).get_all()
    if opts.rank != 0:
        return float('nan')
    return kernel_distance(real, gen, num_subsets=num_subsets, max_subset_size=max_subset_size,
                           rng=opts.numpy_rng(salt=3))
