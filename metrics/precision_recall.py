"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models", sec. 2).

Each sample of a reference set M gets a radius: the distance to its k-th nearest neighbour in M
(the (k+1)-th smallest distance, since the sample itself is at distance 0). A probe counts as
covered when it lies within the radius of at least one sample of M. Precision uses M = real and
probes = generated; recall swaps the roles. Features are VGG16 features, as in upstream's pr50k3.
"""

import torch

from . import metric_utils
from .vgg16 import load_vgg16


def _pairwise_distances(a, b, col_batch_size):
    """Euclidean distances [len(a), len(b)] computed in float32, in column blocks to bound memory."""
    return torch.cat([torch.cdist(a.float().unsqueeze(0), blk.float().unsqueeze(0))[0]
                      for blk in b.split(col_batch_size)], dim=1)


def manifold_coverage(manifold, probes, nhood_size=3, row_batch_size=10000, col_batch_size=10000) -> float:
    """Fraction of `probes` that fall inside the k-NN balls of `manifold`.

    Args:
        manifold: [M, D] tensor of reference features.
        probes: [P, D] tensor of probe features.
        nhood_size: k.
        row_batch_size, col_batch_size: block sizes for the distance matrices.

    Returns:
        Coverage in [0, 1] as a float.
    """
    assert manifold.ndim == 2 and probes.ndim == 2 and manifold.shape[1] == probes.shape[1]
    if manifold.shape[0] <= nhood_size:
        raise ValueError(f'need more than nhood_size={nhood_size} manifold samples, got {manifold.shape[0]}')
    radii = torch.cat([_pairwise_distances(rows, manifold, col_batch_size).kthvalue(nhood_size + 1, dim=1).values
                       for rows in manifold.split(row_batch_size)])  # [M]
    covered = []
    for rows in probes.split(row_batch_size):
        dist = _pairwise_distances(rows, manifold, col_batch_size)  # [rows, M]
        covered.append((dist <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(covered).float().mean().item()


def precision_recall(real_features, gen_features, nhood_size=3, row_batch_size=10000, col_batch_size=10000):
    """(precision, recall) of generated features against real features."""
    precision = manifold_coverage(real_features, gen_features, nhood_size, row_batch_size, col_batch_size)
    recall = manifold_coverage(gen_features, real_features, nhood_size, row_batch_size, col_batch_size)
    return precision, recall


def compute_pr(opts, max_real, num_gen, nhood_size, row_batch_size, col_batch_size):
    """Precision and recall with NVIDIA's VGG16 features (fp16 on CUDA, as upstream)."""
    detector = load_vgg16(opts.device)
    opts.detector_used = detector
    real = metric_utils.compute_feature_stats_for_dataset(
        opts=opts, detector=detector, capture_all=True, max_items=max_real).get_all_torch().to(opts.device)
    gen = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector=detector, capture_all=True, max_items=num_gen).get_all_torch().to(opts.device)
    if opts.rank != 0:
        return float('nan'), float('nan')
    if real.is_cuda:
        real, gen = real.half(), gen.half()
    return precision_recall(real, gen, nhood_size, row_batch_size, col_batch_size)
