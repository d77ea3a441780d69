"""Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", sec. 4).

IS = exp(E_x KL(p(y|x) || p(y))), computed per split of the samples; the mean and std over
splits are reported (upstream: 10 splits of 50k).
"""

import numpy as np

from . import metric_utils
from .detector import DetectorUnavailable


def inception_score(probs, num_splits=10):
    """Mean and std over splits of exp(mean_i KL(p_i || mean_i p_i)).

    Args:
        probs: [N, K] class probabilities (rows sum to 1).
        num_splits: number of contiguous splits.

    Returns:
        (mean, std) as floats.
    """
    probs = np.asarray(probs, np.float64)
    n = probs.shape[0]
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide='ignore', invalid='ignore'):
            # 0 * log 0 = 0 by convention
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts, num_gen, num_splits):
    """Inception Score of `num_gen` generated images (needs a detector with a classifier head)."""
    detector = opts.get_detector()
    if not detector.has_classifier:  # fail before generating 50k images, not after
        raise DetectorUnavailable(f'is50k needs a detector with a classifier head; {detector.name} has none. '
                           f'Use --detector nvidia (inception-2015-12-05.pt) or a path to that file.')
    probs = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector=detector, capture_all=True, max_items=num_gen, use_probabilities=True).get_all()
    if opts.rank != 0:
        return float('nan'), float('nan')
    return inception_score(probs, num_splits)
