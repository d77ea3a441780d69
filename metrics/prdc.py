"""Precision, recall, density and coverage in the Inception pool space.

With real features r_i, generated f_j, NND_k(x) the distance from x to its k-th nearest other sample
of its own set, and B(x, d) the closed ball of radius d:
- precision = 1/M sum_j 1[f_j in some B(r_i, NND_3(r_i))]   (Kynkaanniemi et al. 2019, eq. 1, k = 3)
- recall    = 1/N sum_i 1[r_i in some B(f_j, NND_3(f_j))]   (ibid., k = 3)
- density   = 1/(k M) sum_j sum_i 1[f_j in B(r_i, NND_5(r_i))]  (Naeem et al. 2020, eq. 3, k = 5)
- coverage  = 1/N sum_i 1[min_j |r_i - f_j| <= NND_5(r_i)]  (ibid., eq. 4)
These use Inception pool features, not the VGG16 features of NVIDIA's pr50k3: the values are not
comparable with pr50k3's.

Intervals: the generated rows are resampled (FID's draw counts) with the real set and all radii held
fixed; every replicate is accumulated in the same pass over the distance blocks.
"""

import torch

from . import feature_space, nearest

K_PR = 3         # neighbourhood of precision and recall (Kynkaanniemi et al.)
K_DC = 5         # neighbourhood of density and coverage (Naeem et al.)
SPACE = 'inception-pool (not the VGG16 space of pr50k3)'


def prdc(real, gen, weights=None, row_chunk=None, col_chunk=None):
    """Precision, recall, density and coverage of generated features against real ones.

    Args:
        real: float64 [N, D] features (N > 5), gen: float64 [M, D] (M > 3), on one device.
        weights: float64 [R, M] bootstrap draw counts of the generated rows, or None.
        row_chunk, col_chunk: block sizes (the values do not depend on them).

    Returns:
        (dict name -> point value, dict name -> [R] replicate values or None without weights).
    """
    rad_pr = nearest.kth_radius(real, K_PR, row_chunk, col_chunk)          # [N]
    rad_dc = nearest.kth_radius(real, K_DC, row_chunk, col_chunk)          # [N]
    rad_gen = nearest.kth_radius(gen, K_PR, row_chunk, col_chunk)          # [M]
    n, m = real.shape[0], gen.shape[0]
    precise = torch.zeros(m, dtype=torch.bool, device=gen.device)
    dense = torch.zeros(m, dtype=torch.float64, device=gen.device)
    recalled = torch.zeros(n, dtype=torch.bool, device=gen.device)
    covered = torch.zeros(n, dtype=torch.bool, device=gen.device)
    reps = None if weights is None else dict(
        recall=torch.zeros([weights.shape[0], n], dtype=torch.float64, device=gen.device),
        coverage=torch.zeros([weights.shape[0], n], dtype=torch.float64, device=gen.device))
    for r0, c0, d in nearest.distance_blocks(gen, real, row_chunk, col_chunk):   # d: [gen rows, real cols]
        rows, cols = slice(r0, r0 + d.shape[0]), slice(c0, c0 + d.shape[1])
        in_real = d <= rad_pr[None, cols]
        in_dc = d <= rad_dc[None, cols]
        in_gen = d <= rad_gen[rows, None]
        precise[rows] |= in_real.any(dim=1)
        dense[rows] += in_dc.sum(dim=1)
        recalled[cols] |= in_gen.any(dim=0)
        covered[cols] |= in_dc.any(dim=0)
        if reps is not None:  # how often each real sample is reached in each replicate
            reps['recall'][:, cols] += weights[:, rows] @ in_gen.to(torch.float64)
            reps['coverage'][:, cols] += weights[:, rows] @ in_dc.to(torch.float64)
    values = dict(precision=precise.double().mean(), recall=recalled.double().mean(),
                  density=dense.mean() / K_DC, coverage=covered.double().mean())
    if reps is None:
        return {k: float(v) for k, v in values.items()}, None
    replicates = dict(precision=weights @ precise.double() / m, density=weights @ dense / (K_DC * m),
                      recall=(reps['recall'] > 0).double().mean(dim=1),
                      coverage=(reps['coverage'] > 0).double().mean(dim=1))
    return {k: float(v) for k, v in values.items()}, replicates


def compute_prdc(opts, num_gen, key):
    """(results, uncertainty) of the registered metric `key` from the shared Inception features."""
    feats = feature_space.features(opts, num_gen, min_real=K_DC + 1, min_gen=K_PR + 1, what=key)
    if opts.rank != 0:
        return {f'{key}_{n}': float('nan') for n in ('precision', 'recall', 'density', 'coverage')}, None
    return prdc_record(feats, num_gen, key)


def prdc_record(feats, num_gen, key):
    """(results, uncertainty) from feature_space.Features."""
    weights = feature_space.bootstrap_weights(num_gen, feats.gen.device)
    values, replicates = prdc(feats.real, feats.gen, weights)
    results = {f'{key}_{n}': v for n, v in values.items()}
    # Precision, recall and coverage are shares; density is an average count (it can pass 1).
    bounds = dict(precision=(0.0, 1.0), recall=(0.0, 1.0), coverage=(0.0, 1.0), density=(0.0, float('inf')))
    uncertainty = {f'{key}_{n}': feature_space.fid_lib.interval(v, replicates[n], bounds=bounds[n])
                   for n, v in values.items()}
    return results, uncertainty
