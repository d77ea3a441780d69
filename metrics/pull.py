"""Pull: does the generator lean towards the generated part of a mixed training set?

Needs the part labels a mixed set carries (dataset_tool.py celebamask writes them). Results:
- `_fid_real`, `_fid_generated`: FID of the generated images against the set's real part and against
  its generated part (a lean shows as the second falling relative to the first);
- `_nn`: share of generated images whose nearest training image is in the generated part, beside
  `_base`, that part's share of the set (no lean: `_nn` near `_base`);
- `_probe`: share of generated images that a linear probe, trained to tell the set's real images from
  its generated ones, calls generated; `_probe_accuracy` is its balanced accuracy on a held-out quarter.
  When that accuracy is not clearly above chance, the probe share is left out (the record says why).
"""

import numpy as np
import torch

from . import feature_space, metric_utils

HELD_OUT = 0.25          # share of each part kept out of the probe's training
PROBE_SEED = 0           # the split is a property of the set, not of the evaluation
PROBE_L2 = 1e-2          # ridge on the standardised features: 2048 dims against ~1000 images
PROBE_STEPS = 200
CHANCE_MARGIN_SE = 3     # balanced accuracy must beat 0.5 by this many standard errors


class Skipped(Exception):
    """The metric does not apply to this set (one line saying why)."""


def part_labels(opts, key):
    """bool [N] (True = generated) of the training set's items, or Skipped with the reason."""
    kwargs = feature_space.training_options(opts).dataset_kwargs
    dataset = metric_utils.construct_dataset(kwargs)
    try:
        labels = getattr(dataset, 'part_labels', None)
        name = kwargs.get('path', type(dataset).__name__)
        if labels is None:
            raise Skipped(f'{key} skipped: {name} has no part labels (only sets built by '
                          f'dataset_tool.py celebamask record which images are generated)')
        labels = np.asarray(labels, bool)
        if labels.all() or not labels.any():
            raise Skipped(f'{key} skipped: {name} has {"only" if labels.all() else "no"} generated images')
        return labels
    finally:
        if hasattr(dataset, 'close'):
            dataset.close()


def _split(labels):
    """(train, test) index arrays: a fixed-seed held-out quarter of each part."""
    rng = np.random.default_rng(PROBE_SEED)
    train, test = [], []
    for part in (np.flatnonzero(~labels), np.flatnonzero(labels)):
        part = rng.permutation(part)
        cut = max(1, int(round(len(part) * HELD_OUT)))
        test.append(part[:cut])
        train.append(part[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fit_probe(x, y):
    """Class-balanced L2 logistic regression on standardised x; returns a function features -> logits.

    Full-batch L-BFGS in float64 on x's device, from zeros: deterministic.
    """
    mu, sd = x.mean(dim=0), x.std(dim=0).clamp(min=1e-12)
    z = (x - mu) / sd
    pos = y.double().mean()
    sample_w = torch.where(y, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=PROBE_STEPS, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(
            z @ w + b, y.double(), reduction='none')).mean() + PROBE_L2 * (w * w).sum() / 2
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda f: ((f - mu) / sd) @ w + b


def balanced_accuracy(logits, y):
    hit = (logits > 0) == y
    return float((hit[y].double().mean() + hit[~y].double().mean()) / 2)


def compute_pull(opts, num_gen, key):
    """(results, uncertainty, details) of the registered metric `key`; Skipped for sets without parts."""
    labels = part_labels(opts, key)
    feats = feature_space.features(opts, num_gen, min_real=2, min_gen=2, what=key, training=True)
    if opts.rank != 0:
        return {}, None, None
    return pull_record(opts, feats, labels, num_gen, key)


def pull_record(opts, feats, labels, num_gen, key):
    """(results, uncertainty, details) from feature_space.Features and the part labels (bool [N])."""
    if len(labels) != feats.real.shape[0]:
        raise ValueError(f'{key}: {len(labels)} part labels for {feats.real.shape[0]} images')
    device = feats.gen.device
    is_gen = torch.from_numpy(labels).to(device)
    weights = feature_space.bootstrap_weights(num_gen, device)
    fid_real, unc_real = feature_space.fid_to(feats, ~is_gen)
    fid_gen, unc_gen = feature_space.fid_to(feats, is_gen)
    _, nn_idx = feature_space.nearest_training(opts, feats)
    nn_share, unc_nn = feature_space.share_interval(is_gen[nn_idx[:, 0]].double(), weights)
    results = {f'{key}_fid_real': fid_real, f'{key}_fid_generated': fid_gen, f'{key}_nn': nn_share,
               f'{key}_base': float(labels.mean())}
    uncertainty = {f'{key}_fid_real': unc_real, f'{key}_fid_generated': unc_gen, f'{key}_nn': unc_nn}

    # The probe: trained on 3/4 of each part, judged on the rest, then applied to the generated images.
    train, test = (torch.from_numpy(i).to(device) for i in _split(labels))
    probe = fit_probe(feats.real[train], is_gen[train])
    accuracy = balanced_accuracy(probe(feats.real[test]), is_gen[test])
    n_real, n_gen = int((~is_gen[test]).sum()), int(is_gen[test].sum())
    chance_se = 0.5 * np.sqrt(0.25 / n_real + 0.25 / n_gen)
    results[f'{key}_probe_accuracy'] = accuracy
    details = dict(probe=dict(held_out_real=n_real, held_out_generated=n_gen, balanced_accuracy=accuracy,
                              chance_se=float(chance_se)))
    if accuracy > 0.5 + CHANCE_MARGIN_SE * chance_se:
        results[f'{key}_probe'], uncertainty[f'{key}_probe'] = feature_space.share_interval(
            (probe(feats.gen) > 0).double(), weights)
    else:
        details['probe']['note'] = (f'the probe cannot tell the real from the generated images (held-out balanced '
                                    f'accuracy {accuracy:.3f}, chance 0.5 +- {chance_se:.3f}); no probe share')
    return results, uncertainty, details
