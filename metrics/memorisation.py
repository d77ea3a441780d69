"""Memorisation: do generated images sit on top of training images?

For a generated image with nearest training distances d1 <= d2, the ratio d1 / d2 is small when one
training image is much nearer than any other: a copy. The metric is the share of generated images with
d1 / d2 < RATIO_THRESHOLD (the 1/3 of the nearest-neighbour distance-ratio tests of Yoon et al. 2023,
"Diffusion probabilistic models generalize when they fail to memorize"). Beside it, the record holds
quantiles of d1 and of the training set's own leave-one-out nearest distances: samples closer to the
training images than those are to each other are copies or near-copies, whatever the ratio says.
The ratio of the two medians is a result too (below 1: closer than training images to each other).
"""

import base64
import io

import numpy as np
import PIL.Image
import torch

from . import feature_space, metric_utils, nearest

RATIO_THRESHOLD = 1 / 3
QUANTILES = (0.01, 0.05, 0.25, 0.5)
TOP_K = 16      # most memorised generated images listed in the record (for the report's panel)
THUMBNAILS = 8  # of them stored as images (PNG, at most THUMBNAIL_SIZE pixels a side: ~10 KB each)
THUMBNAIL_SIZE = 64


def memorisation(real, gen, nearest_two, weights=None, top_k=TOP_K):
    """Share of memorised generated images and the distance summaries.

    Args:
        real: float64 [N, D] training features (N >= 2); gen: float64 [M, D].
        nearest_two: (distances [M, 2], indices [M, 2]) of nearest.knn(gen, real, 2).
        weights: float64 [R, M] bootstrap draw counts, or None.
        top_k: how many of the smallest-ratio generated images to list.

    Returns:
        dict(share, interval or None, median_ratio, gen_quantiles, train_quantiles, top) (Python values).
    """
    d, idx = nearest_two
    # A sample at distance 0 from a training image is a copy even if that image has a duplicate (0 / 0).
    ratio = torch.where(d[:, 0] == 0, torch.zeros_like(d[:, 0]), d[:, 0] / d[:, 1])
    memorised = (ratio < RATIO_THRESHOLD).double()
    if weights is None:
        share, interval = float(memorised.mean()), None
    else:
        share, interval = feature_space.share_interval(memorised, weights)
    train_nn = nearest.kth_radius(real, 1)
    q = torch.tensor(QUANTILES, dtype=torch.float64, device=real.device)
    gen_q, train_q = torch.quantile(d[:, 0], q), torch.quantile(train_nn, q)
    order = torch.sort(ratio, stable=True).indices[:top_k]
    top = [dict(gen_index=int(j), train_index=int(i), ratio=float(r), distance=float(dist))
           for j, i, r, dist in zip(order.tolist(), idx[order, 0].tolist(), ratio[order].tolist(),
                                    d[order, 0].tolist())]
    return dict(share=share, interval=interval, median_ratio=float(gen_q[-1] / train_q[-1]),
                gen_quantiles=[float(v) for v in gen_q], train_quantiles=[float(v) for v in train_q], top=top)


def thumbnail_png(img):
    """uint8 [C, H, W] -> base64 text of a PNG at most THUMBNAIL_SIZE pixels a side (box-filtered)."""
    pil = PIL.Image.fromarray(img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0)))
    if max(pil.size) > THUMBNAIL_SIZE:
        pil = pil.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE * pil.size[1] // pil.size[0]), PIL.Image.BOX)
    buf = io.BytesIO()
    pil.save(buf, format='png')
    return base64.b64encode(buf.getvalue()).decode('ascii')


def compute_memorisation(opts, num_gen, key):
    """(results, uncertainty, details) of the registered metric `key`."""
    feats = feature_space.features(opts, num_gen, min_real=3, min_gen=1, what=key, training=True)
    if opts.rank != 0:
        return {key: float('nan'), f'{key}_nn_ratio': float('nan')}, None, None
    return memorisation_record(opts, feats, num_gen, key)


def memorisation_record(opts, feats, num_gen, key):
    """(results, uncertainty, details) from feature_space.Features."""
    weights = feature_space.bootstrap_weights(num_gen, feats.gen.device)
    m = memorisation(feats.real, feats.gen, feature_space.nearest_training(opts, feats), weights)
    images = metric_utils.regenerate(opts, feats.gen_stats, [t['gen_index'] for t in m['top'][:THUMBNAILS]])
    for t, img in zip(m['top'], [] if images is None else images.cpu().numpy()):
        t['image_png'] = thumbnail_png(img)
    details = dict(ratio_threshold=RATIO_THRESHOLD, quantiles=list(QUANTILES), gen_nn_quantiles=m['gen_quantiles'],
                   train_loo_nn_quantiles=m['train_quantiles'], seed=opts.seed, top=m['top'])
    return {key: m['share'], f'{key}_nn_ratio': m['median_ratio']}, {key: m['interval']}, details
