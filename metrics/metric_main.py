"""Metric registry, `calc_metric` and `report_metric` (the API the training loop and calc_metrics.py use).

Registered metrics follow upstream's definitions: fid50k_full, kid50k_full,
pr50k3_full, ppl2_wend, is50k, and the legacy fid50k, kid50k, pr50k3 (PR and PPL need NVIDIA's
vgg16.pt, IS needs NVIDIA's inception .pt with its classifier), and the legacy ppl_zfull, ppl_wfull,
ppl_zend, ppl_wend (cropped).

Fewer generated images: `calc_metric(..., num_gen=N)` evaluates a metric with N generated images
instead of 50,000. The result then says so in its keys: '50k' in every result key is replaced by the
count ('fid50k_full' -> 'fid5k_full' for 5000, 'fid64_full' for 64; 'pr50k3_full_precision' ->
'pr64_3_full_precision'; keys without '50k' get a suffix: 'ppl2_wend' -> 'ppl2_wend_5k'), and the
record carries `num_gen`. The metric name (and so the
metric-<name>.jsonl file) stays the registered one, so a quick check never passes for a 50k number.

Inception-space metrics: prdc50k_full (precision/recall k = 3, density/coverage k = 5), memo50k_full
(memorisation) and pull50k_full (the lean towards a mixed set's generated part; sets without part
labels are skipped with one line). Their records carry `details` (what was measured and how).

One feature pass: calc_metric(..., shared=SharedFeatures()) with the same object for every metric of a
snapshot makes them all read one pass over the real and generated images (calc_metrics.py, train.py).

Uncertainty: FID records carry `uncertainty: {<result key>: {se, ci95, ...}}` from a bootstrap over
the generated features (frechet_inception_distance.fid_uncertainty); `results` holds only the values.
"""

import errno
import json
import os
import re
import time


from dnnlib import util
from . import (frechet_inception_distance, inception_score, kernel_inception_distance, memorisation, metric_utils,
               perceptual_path_length, prdc, precision_recall, pull)
from .metric_utils import SharedFeatures  # noqa: F401  (the callers' handle on one feature pass)

# ----------------------------------------------------------------------------
# Registry.

_metric_dict = dict()  # name -> function(opts, num_gen) -> results, or (results, uncertainty[, details])
STANDARD_NUM_GEN = 50000


def register_metric(fn):
    """Decorator: register `fn(opts, num_gen)` under its function name.

    `fn` returns a dict of results, or (results, uncertainty) where uncertainty maps result keys to
    dicts that go into the record's `uncertainty` field, or (results, uncertainty, details) with a
    JSON-able dict for the record's `details` field.
    """
    assert callable(fn)
    _metric_dict[fn.__name__] = fn
    return fn


def is_valid_metric(metric) -> bool:
    return metric in _metric_dict


def list_valid_metrics() -> list:
    return list(_metric_dict.keys())


def count_label(num_gen) -> str:
    """'50k' for 50000, '5k' for 5000, '64' for 64: how a sample count appears in result keys."""
    return f'{num_gen // 1000}k' if num_gen % 1000 == 0 else str(num_gen)


def relabel_result_key(key, num_gen) -> str:
    """Replace the '50k' in a result key by the actual generated-image count."""
    if num_gen == STANDARD_NUM_GEN:
        return key
    label = count_label(num_gen)
    if '50k' not in key:
        return f'{key}_{label}'

    def repl(m):
        follows_digit = m.end() < len(key) and key[m.end()].isdigit()
        return label + ('_' if follows_digit and not label.endswith('k') else '')
    return re.sub('50k', repl, key)

# ----------------------------------------------------------------------------
# Entry points.


def calc_metric(metric, G, dataset_kwargs, num_gpus=1, rank=0, device=None, detector=None, num_gen=None,
                progress=None, cache=True, seed=None, G_kwargs=None, shared=None, training_set_kwargs=None):
    """Evaluate one registered metric of generator G.

    Args:
        metric: registered name (see list_valid_metrics()).
        G: generator (e.g. G_ema); a copy is evaluated in eval mode on `device`.
        dataset_kwargs: real dataset kwargs (class_name, path, resolution, use_labels, xflip, ...).
        num_gpus, rank: process layout (torch.distributed must be initialised when num_gpus > 1).
        device: torch device (default cuda:rank when available, else cpu).
        detector: None/'auto', 'nvidia', 'fid-helper', a path or URL, or a metrics.detector.Detector.
        num_gen: generated images (default 50,000); non-standard counts relabel the result keys.
        progress: None (silent), True (tqdm bars) or callable(tag, done, total).
        cache: reuse cached real statistics.
        seed: None (fresh randomness, as upstream) or int for reproducible sampling.
        G_kwargs: extra generator kwargs (default none: psi = 1, noise_mode='random').
        shared: a SharedFeatures given to every metric of one snapshot (one feature pass), or None.
        training_set_kwargs: G's training set when it differs from dataset_kwargs (memo50k_full and
            pull50k_full compare with the training images; the study measures FID against the real subset).

    Returns:
        EasyDict(results, metric, total_time, total_time_str, num_gpus, detector=dict(name, sha256), num_gen),
        plus `uncertainty` (result key -> dict) for metrics that estimate one, `details` for those that
        record more, and `skipped` (one line, empty results) for a metric that does not apply to the set.
    """
    if not is_valid_metric(metric):
        raise ValueError(f'unknown metric {metric!r}; valid: {", ".join(list_valid_metrics())}')
    num_gen = STANDARD_NUM_GEN if num_gen is None else int(num_gen)
    if num_gen < 2:
        raise ValueError(f'num_gen must be at least 2, got {num_gen}')
    opts = metric_utils.MetricOptions(G=None, G_kwargs=G_kwargs, dataset_kwargs=dataset_kwargs,
                                      num_gpus=num_gpus, rank=rank, device=device, progress=progress,
                                      cache=cache, detector=detector, seed=seed, shared=shared,
                                      training_set_kwargs=training_set_kwargs)
    if G is not None:
        opts.G = metric_utils.prepare_generator(G, opts.device)

    start = time.time()
    try:
        results = _metric_dict[metric](opts, num_gen)
    except pull.Skipped as e:
        return util.EasyDict(results=util.EasyDict(), metric=metric, skipped=str(e), num_gen=num_gen)
    results = results if isinstance(results, tuple) else (results,)
    results, uncertainty, details = (tuple(results) + (None, None))[:3]
    total_time = time.time() - start

    # Every rank returns rank 0's values (the statistics are only reduced there).
    values = {relabel_result_key(k, num_gen): float(v) for k, v in results.items()}
    values = metric_utils.broadcast_object(values, opts)
    if uncertainty is not None:
        uncertainty = {relabel_result_key(k, num_gen): v for k, v in uncertainty.items() if v is not None}
        uncertainty = metric_utils.broadcast_object(uncertainty, opts)
    det = opts.detector_used
    extra = dict(uncertainty=uncertainty) if uncertainty else {}
    details = metric_utils.broadcast_object(details, opts)
    if details:
        extra['details'] = details
    return util.EasyDict(
        results=util.EasyDict(values),
        metric=metric,
        total_time=total_time,
        total_time_str=util.format_time(total_time),
        num_gpus=num_gpus,
        detector=dict(name=det.name, sha256=det.sha256) if det is not None else None,
        num_gen=num_gen,
        **extra,
    )


def result_record(result_dict, run_dir=None, snapshot_pkl=None, kimg=None) -> dict:
    """The record report_metric appends, keys in order: upstream's, then kimg/detector/num_gen/uncertainty."""
    if snapshot_pkl is not None and run_dir is not None and not util.is_url(snapshot_pkl):
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    record = dict(result_dict)
    record['snapshot_pkl'] = snapshot_pkl
    record['timestamp'] = time.time()
    record['kimg'] = kimg
    ordered = {k: record.get(k) for k in ('results', 'metric', 'total_time', 'total_time_str', 'num_gpus',
                                          'snapshot_pkl', 'timestamp', 'kimg', 'detector', 'num_gen')}
    if record.get('uncertainty'):
        ordered['uncertainty'] = record['uncertainty']
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    return ordered


def result_line(result_dict, run_dir=None, snapshot_pkl=None, kimg=None) -> str:
    """The JSON text (no newline) of result_record."""
    return json.dumps(result_record(result_dict, run_dir=run_dir, snapshot_pkl=snapshot_pkl, kimg=kimg))


def report_metric(result_dict, run_dir=None, snapshot_pkl=None, kimg=None):
    """Print the result line and append it to <run_dir>/metric-<metric>.jsonl.

    The line is written with a single O_APPEND write and fsync'ed, so concurrent writers and crashes
    never leave a partial or interleaved line.
    """
    if result_dict.get('skipped'):  # nothing measured: say why, write no record
        print(result_dict['skipped'], flush=True)
        return
    record = result_record(result_dict, run_dir=run_dir, snapshot_pkl=snapshot_pkl, kimg=kimg)
    # `details` (memorisation's thumbnails: ~80 KB of base64) go to the jsonl only, so log.txt stays readable.
    print(json.dumps({k: v for k, v in record.items() if k != 'details'}), flush=True)
    if run_dir is not None and os.path.isdir(run_dir):
        _append_line(os.path.join(run_dir, f'metric-{result_dict["metric"]}.jsonl'), json.dumps(record))


def _append_line(path, line):
    """One O_APPEND write of `line`; a failed write (full disk) is undone and raised naming `path`."""
    data = (line + '\n').encode('utf-8')
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = os.fstat(fd).st_size
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as e:
        if os.fstat(fd).st_size > start:
            os.ftruncate(fd, start)  # no partial line stays behind
        if start == 0:
            os.remove(path)  # nor an empty file this call created
        raise OSError(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)

# ----------------------------------------------------------------------------
# Recommended metrics (upstream definitions: all reals, no x-flip).


def _full_dataset(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)


@register_metric
def fid50k_full(opts, num_gen):
    _full_dataset(opts)
    fid, unc = frechet_inception_distance.compute_fid_with_uncertainty(opts, max_real=None, num_gen=num_gen)
    return dict(fid50k_full=fid), dict(fid50k_full=unc)


@register_metric
def kid50k_full(opts, num_gen):
    _full_dataset(opts)
    kid = kernel_inception_distance.compute_kid(opts, max_real=1000000, num_gen=num_gen,
                                                num_subsets=100, max_subset_size=1000)
    return dict(kid50k_full=kid)


@register_metric
def pr50k3_full(opts, num_gen):
    _full_dataset(opts)
    precision, recall = precision_recall.compute_pr(opts, max_real=200000, num_gen=num_gen, nhood_size=3,
                                                    row_batch_size=10000, col_batch_size=10000)
    return dict(pr50k3_full_precision=precision, pr50k3_full_recall=recall)


@register_metric
def ppl2_wend(opts, num_gen):
    return dict(ppl2_wend=_ppl(opts, num_gen, space='w', sampling='end', crop=False))


@register_metric
def is50k(opts, num_gen):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    mean, std = inception_score.compute_is(opts, num_gen=num_gen, num_splits=10)
    return dict(is50k_mean=mean, is50k_std=std)

# ----------------------------------------------------------------------------
# Legacy metrics (first 50k reals; the dataset's x-flip setting is kept, as upstream).


@register_metric
def fid50k(opts, num_gen):
    opts.dataset_kwargs.update(max_size=None)
    fid, unc = frechet_inception_distance.compute_fid_with_uncertainty(opts, max_real=50000, num_gen=num_gen)
    return dict(fid50k=fid), dict(fid50k=unc)


@register_metric
def kid50k(opts, num_gen):
    opts.dataset_kwargs.update(max_size=None)
    kid = kernel_inception_distance.compute_kid(opts, max_real=50000, num_gen=num_gen,
                                                num_subsets=100, max_subset_size=1000)
    return dict(kid50k=kid)


@register_metric
def pr50k3(opts, num_gen):
    opts.dataset_kwargs.update(max_size=None)
    precision, recall = precision_recall.compute_pr(opts, max_real=50000, num_gen=num_gen, nhood_size=3,
                                                    row_batch_size=10000, col_batch_size=10000)
    return dict(pr50k3_precision=precision, pr50k3_recall=recall)


def _ppl(opts, num_gen, space, sampling, crop):
    return perceptual_path_length.compute_ppl(opts, num_samples=num_gen, epsilon=1e-4, space=space,
                                              sampling=sampling, crop=crop, batch_size=2)


@register_metric
def ppl_zfull(opts, num_gen):
    return dict(ppl_zfull=_ppl(opts, num_gen, space='z', sampling='full', crop=True))


@register_metric
def ppl_wfull(opts, num_gen):
    return dict(ppl_wfull=_ppl(opts, num_gen, space='w', sampling='full', crop=True))


@register_metric
def ppl_zend(opts, num_gen):
    return dict(ppl_zend=_ppl(opts, num_gen, space='z', sampling='end', crop=True))


@register_metric
def ppl_wend(opts, num_gen):
    return dict(ppl_wend=_ppl(opts, num_gen, space='w', sampling='end', crop=True))

# ----------------------------------------------------------------------------
# Inception-space metrics of the study (all reals, no x-flip; one feature pass with FID).


@register_metric
def prdc50k_full(opts, num_gen):
    _full_dataset(opts)
    results, uncertainty = prdc.compute_prdc(opts, num_gen, 'prdc50k_full')
    return results, uncertainty, dict(space=prdc.SPACE, k_precision_recall=prdc.K_PR, k_density_coverage=prdc.K_DC)


@register_metric
def memo50k_full(opts, num_gen):
    _full_dataset(opts)
    return memorisation.compute_memorisation(opts, num_gen, 'memo50k_full')


@register_metric
def pull50k_full(opts, num_gen):
    _full_dataset(opts)
    return pull.compute_pull(opts, num_gen, 'pull50k_full')
