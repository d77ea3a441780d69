"""FID's bootstrap uncertainty: exact replicate values, coverage of a known FID, and the metric record."""

import json

import numpy as np
import pytest
import torch

from metrics import frechet_inception_distance as fid_lib
from metrics import metric_main
from metrics.frechet_inception_distance import frechet_distance

import test_metrics_e2e as e2e


def _explicit_replicate(x, counts_row, mu_r, s_r):
    """FID of a resample built by repeating rows: the definition the fast path must equal."""
    xb = np.repeat(x, counts_row, axis=0)
    return frechet_distance(xb.mean(0), np.cov(xb, rowvar=False, bias=True), mu_r, s_r)


@pytest.mark.parametrize('n', [5, 60])  # 5 rows in 8 dims: the Gram form; 60 rows: the D x D form
def test_replicate_values_equal_fid_of_the_resampled_rows(n):
    rng = np.random.default_rng(0)
    d = 8
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 1.0
    a = rng.standard_normal((d, d))
    mu_r, s_r = rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)
    counts = fid_lib.bootstrap_counts(n, replicates=6, seed=3)
    assert counts.shape == (6, n) and (counts.sum(axis=1) == n).all()
    got = fid_lib.bootstrap_values(torch.from_numpy(x), mu_r, s_r, counts)
    want = [_explicit_replicate(x, row, mu_r, s_r) for row in counts]
    # The reference's D x D form takes square roots of rounding-level eigenvalues of the rank-deficient
    # resample (~1e-8 each), hence the tolerance.
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_interval_covers_the_true_fid_about_95_percent_of_the_time():
    """200 trials: generated features drawn from a known Gaussian, real statistics known exactly."""
    rng = np.random.default_rng(1)
    d, n, trials = 3, 400, 200
    mu_g, mu_r = np.zeros(d), np.array([0.6, -0.3, 0.2])
    s_g = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]])
    s_r = np.diag([0.7, 1.2, 0.4])
    true_fid = frechet_distance(mu_g, s_g, mu_r, s_r)
    chol = np.linalg.cholesky(s_g)
    covered, widths = 0, []
    for _ in range(trials):
        x = mu_g + rng.standard_normal((n, d)) @ chol.T
        point = frechet_distance(x.mean(0), np.cov(x, rowvar=False, bias=True), mu_r, s_r)
        unc = fid_lib.fid_uncertainty(point, x, mu_r, s_r)
        lo, hi = unc['ci95']
        covered += lo <= true_fid <= hi
        widths.append(hi - lo)
    assert 0.91 <= covered / trials <= 0.99, covered
    # The interval is informative: far narrower than the value (a broken SE of 0 or inf fails here).
    assert 0 < np.median(widths) < true_fid


def test_uncertainty_is_deterministic_and_centred_on_the_point():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 4))
    mu_r, s_r = np.ones(4), np.eye(4)
    a = fid_lib.fid_uncertainty(7.0, x, mu_r, s_r)
    b = fid_lib.fid_uncertainty(7.0, x.copy(), mu_r, s_r)
    assert a == b
    assert a['replicates'] == fid_lib.BOOTSTRAP_REPLICATES and a['method'] == 'bootstrap-generated'
    assert a['ci95'][0] == pytest.approx(7.0 - fid_lib.Z95 * a['se'])
    assert a['ci95'][1] == pytest.approx(7.0 + fid_lib.Z95 * a['se'])
    assert fid_lib.fid_uncertainty(7.0, x, mu_r, s_r, seed=1) != a


def test_metric_record_keeps_the_point_value_and_adds_the_interval(tmp_path, cache_dir):
    images = e2e._write_images(tmp_path / 'reals.npy')
    kwargs = e2e._toy_kwargs(tmp_path / 'reals.npy')
    det = e2e.ToyDetector()
    G = e2e.ReplayGenerator(images)
    res = metric_main.calc_metric('fid50k_full', G, kwargs, device='cpu', detector=det, num_gen=20)

    # The point value is the plain FID of the same features, bit for bit.
    opts = metric_main.metric_utils.MetricOptions(dataset_kwargs=kwargs, device='cpu', detector=det)
    G.next = 0
    opts.G = G
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    assert res.results.fid20_full == fid_lib.compute_fid(opts, max_real=None, num_gen=20)

    unc = res.uncertainty['fid20_full']
    assert set(res.uncertainty) == {'fid20_full'} and unc['se'] > 0
    assert unc['ci95'][0] < res.results.fid20_full < unc['ci95'][1]
    metric_main.report_metric(res, run_dir=str(tmp_path), kimg=4)
    record = json.loads((tmp_path / 'metric-fid50k_full.jsonl').read_text())
    assert record['results'] == {'fid20_full': res.results.fid20_full}  # values only, as upstream
    assert record['uncertainty']['fid20_full']['ci95'] == unc['ci95']
    assert list(record)[:7] == ['results', 'metric', 'total_time', 'total_time_str', 'num_gpus',
                                'snapshot_pkl', 'timestamp']


def test_kid_records_carry_no_uncertainty(tmp_path, cache_dir):
    images = e2e._write_images(tmp_path / 'reals.npy')
    res = metric_main.calc_metric('kid50k_full', e2e.ReplayGenerator(images), e2e._toy_kwargs(tmp_path / 'reals.npy'),
                                  device='cpu', detector=e2e.ToyDetector(), num_gen=40, seed=0)
    assert 'uncertainty' not in res
    assert 'uncertainty' not in json.loads(metric_main.result_line(res))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from dnnlib import util
    monkeypatch.setattr(util, '_cache_dir_override', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
