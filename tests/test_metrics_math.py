"""Metric math against closed forms and independent computations (no networks involved)."""

import numpy as np
import pytest
import torch

from metrics import metric_utils
from metrics.frechet_inception_distance import frechet_distance
from metrics.inception_score import inception_score
from metrics.kernel_inception_distance import kernel_distance, polynomial_mmd2_unbiased
from metrics.metric_main import count_label, relabel_result_key
from metrics.precision_recall import manifold_coverage, precision_recall


def _random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ----------------------------------------------------------------------------
# FID


@pytest.mark.parametrize('method', ['sqrtm', 'eigh'])
def test_frechet_commuting_closed_form(method):
    # Diagonal covariances commute: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize('method', ['sqrtm', 'eigh'])
def test_frechet_rotated_commuting_closed_form(method):
    # Same eigenbasis, rotated: still commuting, still the closed form, but no longer diagonal.
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.2, 2, d), rng.uniform(0.2, 2, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2, method=method) == pytest.approx(expected, rel=1e-8)


def test_frechet_general_matches_independent_float64():
    # Non-commuting SPD matrices: compare with an independent statement of the 2-Wasserstein
    # distance, Tr S1 + Tr S2 - 2 Tr (S2^1/2 S1 S2^1/2)^1/2, each root via eigendecomposition.
    rng = np.random.default_rng(2)
    d = 32
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    r2 = psd_sqrt(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r2 @ s1 @ r2))
    for method in ('sqrtm', 'eigh'):
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(3)
    d = 20
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_rank_deficient_is_finite():
    # Fewer samples than dimensions (quick checks with small num_gen): singular covariances.
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    a = frechet_distance(x.mean(0), s1, y.mean(0), s2, method='sqrtm')
    b = frechet_distance(x.mean(0), s1, y.mean(0), s2, method='eigh')
    assert np.isfinite(a) and a == pytest.approx(b, rel=1e-6)


# ----------------------------------------------------------------------------
# Feature statistics


def test_feature_stats_population_covariance_in_batches():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((103, 7)).astype(np.float32) * 3 + 1
    stats = metric_utils.FeatureStats(capture_mean_cov=True, capture_all=True, max_items=100)
    for chunk in np.array_split(x, 9):
        stats.append(chunk)
    mean, cov = stats.get_mean_cov()
    kept = x[:100].astype(np.float64)
    assert stats.num_items == 100 and stats.is_full()
    np.testing.assert_allclose(mean, kept.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(kept, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)  # divide by N
    np.testing.assert_array_equal(stats.get_all(), x[:100])


def test_feature_stats_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    stats = metric_utils.FeatureStats(capture_mean_cov=True, capture_all=True)
    stats.append(rng.standard_normal((20, 5)))
    path = tmp_path / 'stats.npz'
    stats.save(path)
    loaded = metric_utils.FeatureStats.load(path)
    for got, want in zip(loaded.get_mean_cov(), stats.get_mean_cov()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.get_all(), stats.get_all())
    assert loaded.num_items == 20


def test_quantize_matches_round_half_up():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 1 / 255, 0.5, 0.99, 1.0, 2.0])
    got = metric_utils.quantize_images(x)
    want = torch.from_numpy(np.clip(np.floor(x.double().numpy() * 127.5 + 127.5 + 0.5), 0, 255).astype(np.uint8))
    assert got.dtype == torch.uint8
    assert torch.equal(got, want)
    assert got[3].item() == 128 and got[1].item() == 0 and got[7].item() == 255


# ----------------------------------------------------------------------------
# KID


def test_mmd_unbiased_matches_direct_loops():
    rng = np.random.default_rng(7)
    m, d = 6, 4
    x, y = rng.standard_normal((m, d)), rng.standard_normal((m, d)) + 0.3
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_whole_set_subset_equals_mmd_and_is_unbiased_near_zero():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((50, 8)), rng.standard_normal((50, 8)) + 1.0
    # With subset size = set size every subset is the whole set (a permutation): KID = MMD^2_u.
    assert kernel_distance(x, y, num_subsets=3, max_subset_size=50, rng=rng) == pytest.approx(
        polynomial_mmd2_unbiased(y, x), rel=1e-10)
    # Same distribution: the unbiased estimate is centred on 0 (much smaller than the shifted case).
    same = kernel_distance(rng.standard_normal((400, 8)), rng.standard_normal((400, 8)), num_subsets=20,
                           max_subset_size=100, rng=rng)
    shifted = kernel_distance(x, y, num_subsets=20, max_subset_size=50, rng=rng)
    assert abs(same) < 0.05 * shifted


# ----------------------------------------------------------------------------
# Precision / recall


def test_manifold_coverage_known_points():
    # 1-D manifold {0, 1, 2, 3, 10}; k = 1: radii are distances to the nearest other point: 1,1,1,1,7.
    manifold = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    probes = torch.tensor([[0.5], [3.9], [4.1], [16.9], [17.1], [-1.0]])
    # 0.5 (0 away from 0 by 0.5 <= 1), 3.9 (0.9 from 3), 4.1 (5.9 from 10 <= 7), 16.9 (6.9 <= 7) and
    # -1 (1 from 0) are covered; 17.1 (7.1 from 10) is not.
    assert manifold_coverage(manifold, probes, nhood_size=1, row_batch_size=2, col_batch_size=3) == pytest.approx(5 / 6)


def test_precision_recall_disjoint_and_subset():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 2, generator=g)
    far = torch.randn(200, 2, generator=g) + 100
    assert precision_recall(real, far, nhood_size=3) == (0.0, 0.0)
    # Generated = a dense subset of the real cloud's core: high precision, low recall.
    core = real[real.norm(dim=1) < 0.5]
    p, r = precision_recall(real, core, nhood_size=3)
    assert p == 1.0 and r < 0.5


# ----------------------------------------------------------------------------
# Inception Score


def test_inception_score_known_values():
    k = 10
    one_hot = np.eye(k)[np.arange(100) % k]          # confident and uniform over classes: IS = k
    mean, std = inception_score(one_hot, num_splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    uniform = np.full((100, k), 1.0 / k)             # no information: IS = 1
    assert inception_score(uniform, num_splits=5)[0] == pytest.approx(1.0, rel=1e-12)
    two = np.eye(k)[np.arange(100) % 2]              # confident over 2 classes, 10/10 per split: IS = 2
    assert inception_score(two, num_splits=5)[0] == pytest.approx(2.0, rel=1e-12)


# ----------------------------------------------------------------------------
# Result labelling for non-standard counts


def test_relabel_result_keys():
    assert count_label(50000) == '50k' and count_label(5000) == '5k' and count_label(64) == '64'
    assert relabel_result_key('fid50k_full', 50000) == 'fid50k_full'
    assert relabel_result_key('fid50k_full', 5000) == 'fid5k_full'
    assert relabel_result_key('fid50k_full', 64) == 'fid64_full'
    assert relabel_result_key('pr50k3_full_recall', 64) == 'pr64_3_full_recall'
    assert relabel_result_key('pr50k3_full_recall', 10000) == 'pr10k3_full_recall'
    assert relabel_result_key('is50k_mean', 2000) == 'is2k_mean'


# ----------------------------------------------------------------------------
# Perceptual path length


def test_ppl_filtered_mean_drops_percentile_tails():
    from metrics.perceptual_path_length import filtered_mean
    x = np.arange(1, 201, dtype=np.float64)   # 1..200: 1st pct ('lower') = 2, 99th ('higher') = 199
    assert filtered_mean(x) == pytest.approx(np.arange(2, 200).mean())
    assert filtered_mean(np.r_[np.ones(199), 1e9]) == pytest.approx(1.0)   # one outlier ignored


def test_slerp_endpoints_and_unit_norm():
    from metrics.perceptual_path_length import slerp
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(slerp(a, b, torch.zeros(5, 1, dtype=torch.float64)), a / a.norm(dim=1, keepdim=True))
    torch.testing.assert_close(slerp(a, b, torch.ones(5, 1, dtype=torch.float64)), b / b.norm(dim=1, keepdim=True))
    mid = slerp(a, b, torch.full((5, 1), 0.3, dtype=torch.float64))
    torch.testing.assert_close(mid.norm(dim=1), torch.ones(5, dtype=torch.float64))
