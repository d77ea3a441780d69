"""PRDC, memorisation and pull (Inception-space metrics), where the truth is known.

The real family is scikit-learn's handwritten digits drawn in warm colours, the "generated" family the
same kind of digits in cool colours; a mixed training set holds 20% cool digits and says so in its
dataset.json. The detector is the image itself at 8x8 (192 numbers), so nearness is nearness of digits.
"Generators" map each latent deterministically to one image of a pool: the training set (replay), its
generated part, or a held-out split of both families in the set's proportions.
"""

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from metrics import memorisation, metric_main, metric_utils, nearest, prdc, pull
from tests.test_metrics_e2e import ToyDetector
from training.dataset import ImageFolderDataset

sklearn_datasets = pytest.importorskip('sklearn.datasets')

NUM_WARM, NUM_COOL, NUM_GEN = 400, 100, 400
WARM, COOL = np.array([255, 150, 40]), np.array([40, 150, 255])

# ----------------------------------------------------------------------------
# Two families of real images.


def _digits():
    """1797 digit images as float [N, 16, 16] in [0, 1] (8x8 scaled up 2x), in a fixed shuffled order."""
    digits = sklearn_datasets.load_digits().images / 16.0
    order = np.random.default_rng(0).permutation(len(digits))
    return digits[order].repeat(2, axis=1).repeat(2, axis=2)


def _colour(gray, rgb):
    return np.clip(gray[:, None] * rgb[None, :, None, None], 0, 255).astype(np.uint8)  # [N, 3, 16, 16]


@pytest.fixture(scope='module')
def families():
    d = _digits()
    return dict(warm=_colour(d[:NUM_WARM], WARM), cool=_colour(d[NUM_WARM:NUM_WARM + NUM_COOL], COOL),
                held_warm=_colour(d[1000:1000 + NUM_WARM], WARM),
                held_cool=_colour(d[1000 + NUM_WARM:1000 + NUM_WARM + NUM_COOL], COOL))


def _png(img):
    import PIL.Image
    buf = io.BytesIO()
    PIL.Image.fromarray(img.transpose(1, 2, 0)).save(buf, format='png')
    return buf.getvalue()


def write_zip(path, images, generated=None):
    """A dataset zip; `generated` (bool per image) goes into dataset.json as the set's part labels."""
    names = [f'{i:08d}.png' for i in range(len(images))]
    meta = dict(labels=None)
    if generated is not None:
        meta['generated'] = [n for n, g in zip(names, generated) if g]
    with zipfile.ZipFile(path, 'w') as zf:
        for n, img in zip(names, images):
            zf.writestr(n, _png(img))
        zf.writestr('dataset.json', json.dumps(meta))
    return str(path)


@pytest.fixture(scope='module')
def mixed_set(families, tmp_path_factory):
    images = np.concatenate([families['warm'], families['cool']])
    generated = np.arange(len(images)) >= NUM_WARM
    path = write_zip(tmp_path_factory.mktemp('data') / 'mix.zip', images, generated)
    return path, images, generated

# ----------------------------------------------------------------------------
# Detector and "generators".


class PixelDetector(ToyDetector):
    """The image at 8x8 as 192 features: nearest neighbours are nearest digits."""

    name = 'pixels8'
    sha256 = '8' * 64

    def features(self, images):
        super().features(images)  # checks the dtype and counts the images
        return torch.nn.functional.avg_pool2d(images.float(), 2).flatten(1)


class PoolGenerator(torch.nn.Module):
    """Image number floor(Phi(z_0) * len(pool)) of a fixed pool: a pure function of z."""

    def __init__(self, pool):
        super().__init__()
        self.register_buffer('pool', torch.from_numpy(pool).float() / 127.5 - 1)
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels = 4, 0, pool.shape[-1], pool.shape[1]

    def forward(self, z, c, **_kwargs):
        u = 0.5 * (1 + torch.erf(z[:, 0].double() / np.sqrt(2)))
        return self.pool[(u * len(self.pool)).long().clamp(max=len(self.pool) - 1)]


def _evaluate(metric, G, path, seed=1, shared=None, num_gen=NUM_GEN, detector=None):
    return metric_main.calc_metric(metric, G, dict(class_name='training.dataset.ImageFolderDataset', path=path),
                                   device='cpu', detector=detector or PixelDetector(), num_gen=num_gen,
                                   cache=False, seed=seed, shared=shared)


@pytest.fixture(scope='module')
def generators(families, mixed_set):
    _, images, _ = mixed_set
    held = np.concatenate([families['held_warm'], families['held_cool']])
    return dict(replay=PoolGenerator(images), generated_part=PoolGenerator(families['cool']),
                held_out=PoolGenerator(held))


@pytest.fixture(scope='module')
def evaluated(generators, mixed_set):
    """Every new metric of each generator, one shared feature pass per generator."""
    out = {}
    for name, G in generators.items():
        shared = metric_utils.SharedFeatures()
        out[name] = {m: _evaluate(m, G, mixed_set[0], shared=shared)
                     for m in ('prdc50k_full', 'memo50k_full', 'pull50k_full')}
    return out

# ----------------------------------------------------------------------------
# The truth is known.


def test_replaying_the_training_set_is_memorisation(evaluated):
    r = evaluated['replay']
    assert r['memo50k_full'].results['memo400_full'] > 0.99
    assert r['memo50k_full'].results['memo400_full_nn_ratio'] < 1e-3
    assert r['prdc50k_full'].results['prdc400_full_precision'] > 0.99
    pull_r = r['pull50k_full'].results
    assert abs(pull_r['pull400_full_nn'] - pull_r['pull400_full_base']) < 0.08  # replays both parts


def test_drawing_the_generated_part_is_pull(evaluated):
    r = evaluated['generated_part']['pull50k_full'].results
    assert r['pull400_full_nn'] > 0.99 and r['pull400_full_base'] == pytest.approx(0.2)
    assert r['pull400_full_fid_generated'] < 0.1 * r['pull400_full_fid_real']
    assert r['pull400_full_probe_accuracy'] > 0.9 and r['pull400_full_probe'] > 0.95


def test_drawing_held_out_images_is_neither(evaluated):
    r = evaluated['held_out']
    pull_r = r['pull50k_full'].results
    assert abs(pull_r['pull400_full_nn'] - pull_r['pull400_full_base']) < 0.08
    assert r['memo50k_full'].results['memo400_full'] < 0.05
    assert r['memo50k_full'].results['memo400_full_nn_ratio'] > 0.7
    prdc_r = r['prdc50k_full'].results
    assert prdc_r['prdc400_full_precision'] > 0.7 and prdc_r['prdc400_full_recall'] > 0.7
    # ... while replaying the set sits far closer to it than unseen images do.
    assert evaluated['replay']['memo50k_full'].results['memo400_full'] > 20 * r['memo50k_full'].results[
        'memo400_full']


def test_records_carry_intervals_details_and_the_detector(evaluated):
    r = evaluated['held_out']
    for name, res in r.items():
        assert res.detector == dict(name='pixels8', sha256='8' * 64)
        assert res.num_gen == NUM_GEN
    prdc_res, memo_res, pull_res = r['prdc50k_full'], r['memo50k_full'], r['pull50k_full']
    assert set(prdc_res.uncertainty) == set(prdc_res.results)
    for key, unc in prdc_res.uncertainty.items():
        lo, hi = unc['ci95']
        assert lo < prdc_res.results[key] < hi or unc['se'] == 0
        assert 0 < unc['se'] < 0.2 or key.endswith(('recall', 'coverage'))
    assert 'VGG16' in prdc_res.details['space'] and 'inception' in prdc_res.details['space']
    assert memo_res.uncertainty['memo400_full']['replicates'] == 50
    top = memo_res.details['top']
    assert len(top) == memorisation.TOP_K and all(0 <= t['gen_index'] < NUM_GEN for t in top)
    assert [t['ratio'] for t in top] == sorted(t['ratio'] for t in top)
    assert set(pull_res.uncertainty) >= {'pull400_full_fid_real', 'pull400_full_fid_generated', 'pull400_full_nn'}
    line = json.loads(metric_main.result_line(memo_res))
    assert line['details']['ratio_threshold'] == pytest.approx(1 / 3)

# ----------------------------------------------------------------------------
# One feature pass.


def test_all_metrics_share_one_feature_pass_and_fid_is_unchanged(generators, mixed_set):
    G = generators['held_out']
    det = PixelDetector()
    shared = metric_utils.SharedFeatures()
    together = {m: _evaluate(m, G, mixed_set[0], shared=shared, detector=det)
                for m in ('fid50k_full', 'prdc50k_full', 'memo50k_full', 'pull50k_full')}
    assert det.images_seen == NUM_WARM + NUM_COOL + NUM_GEN  # each real and generated image once
    alone = _evaluate('fid50k_full', G, mixed_set[0])
    assert together['fid50k_full'].results == alone.results
    assert together['fid50k_full'].uncertainty == alone.uncertainty


def test_seeded_runs_are_bit_identical(generators, mixed_set):
    a = [_evaluate(m, generators['replay'], mixed_set[0], seed=7) for m in ('prdc50k_full', 'memo50k_full',
                                                                             'pull50k_full')]
    b = [_evaluate(m, generators['replay'], mixed_set[0], seed=7) for m in ('prdc50k_full', 'memo50k_full',
                                                                             'pull50k_full')]
    for x, y in zip(a, b):
        assert x.results == y.results and x.uncertainty == y.uncertainty and x.get('details') == y.get('details')


def test_values_do_not_depend_on_batch_or_block_sizes(generators, mixed_set, monkeypatch):
    def run(batch_size):
        opts = metric_utils.MetricOptions(G=generators['held_out'], dataset_kwargs=dict(
            class_name='training.dataset.ImageFolderDataset', path=mixed_set[0]), device='cpu',
            detector=PixelDetector(), cache=False, seed=3, batch_size=batch_size, shared=metric_utils.SharedFeatures())
        return (prdc.compute_prdc(opts, NUM_GEN, 'p'), memorisation.compute_memorisation(opts, NUM_GEN, 'm'),
                pull.compute_pull(opts, NUM_GEN, 'u'))
    big = run(64)
    monkeypatch.setattr(nearest, 'ROW_CHUNK', 37)
    monkeypatch.setattr(nearest, 'COL_CHUNK', 53)
    small = run(7)
    for x, y in zip(big, small):
        assert x[0] == y[0]
        assert x[1] == y[1]

# ----------------------------------------------------------------------------
# Against direct O(N^2) implementations.


def _direct_prdc(real, gen):
    """Precision, recall, density and coverage straight from the full distance matrices (numpy)."""
    def dists(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    rr, gg, gr = dists(real, real), dists(gen, gen), dists(gen, real)
    np.fill_diagonal(rr, np.inf)
    np.fill_diagonal(gg, np.inf)
    r3, r5, g3 = np.sort(rr, 1)[:, 2], np.sort(rr, 1)[:, 4], np.sort(gg, 1)[:, 2]
    return dict(precision=(gr <= r3[None]).any(1).mean(), recall=(gr <= g3[:, None]).any(0).mean(),
                density=(gr <= r5[None]).sum(1).mean() / 5, coverage=(gr.min(0) <= r5).mean())


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_prdc_matches_the_direct_computation(seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=[60, 5])
    gen = rng.normal(size=[45, 5]) * 1.3 + 0.4
    got, reps = prdc.prdc(torch.from_numpy(real), torch.from_numpy(gen),
                          weights=torch.ones([2, 45], dtype=torch.float64), row_chunk=16, col_chunk=11)
    want = _direct_prdc(real, gen)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
        assert reps[k].tolist() == pytest.approx([want[k]] * 2, abs=1e-12), k  # all-ones draw = the point


def test_knn_matches_sorting_the_full_matrix():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=[33, 4]), rng.normal(size=[29, 4])
    d, i = nearest.knn(torch.from_numpy(x), torch.from_numpy(y), 3, row_chunk=5, col_chunk=7)
    full = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1))
    assert np.allclose(d.numpy(), np.sort(full, 1)[:, :3], atol=1e-12)
    assert (i.numpy() == np.argsort(full, 1)[:, :3]).all()
    loo = nearest.kth_radius(torch.from_numpy(x), 2, row_chunk=6, col_chunk=4).numpy()
    self_d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(self_d, np.inf)
    assert np.allclose(loo, np.sort(self_d, 1)[:, 1], atol=1e-12)


def test_memorisation_ratio_matches_the_direct_computation():
    rng = np.random.default_rng(5)
    real = rng.normal(size=[40, 3])
    gen = np.concatenate([real[:10] + 1e-3 * rng.normal(size=[10, 3]), rng.normal(size=[30, 3])])
    full = np.sqrt(((gen[:, None] - real[None]) ** 2).sum(-1))
    two = np.sort(full, 1)[:, :2]
    want = (two[:, 0] / two[:, 1] < 1 / 3).mean()
    g, r = torch.from_numpy(gen), torch.from_numpy(real)
    got = memorisation.memorisation(r, g, nearest.knn(g, r, 2))
    assert got['share'] == want and want >= 0.25
    assert {t['gen_index'] for t in got['top'][:10]} == set(range(10))

# ----------------------------------------------------------------------------
# Clear errors.


def test_a_set_without_part_labels_skips_pull_in_one_line(families, generators, tmp_path, capsys):
    path = write_zip(tmp_path / 'plain.zip', families['warm'][:50])
    res = _evaluate('pull50k_full', generators['held_out'], path, num_gen=20)
    assert res.results == {} and 'no part labels' in res.skipped and res.skipped.count('\n') == 0
    metric_main.report_metric(res, run_dir=str(tmp_path))
    assert capsys.readouterr().out.strip() == res.skipped
    assert not (tmp_path / 'metric-pull50k_full.jsonl').exists()


def test_too_few_images_is_one_clear_error(families, generators, tmp_path):
    path = write_zip(tmp_path / 'tiny.zip', families['warm'][:5])
    with pytest.raises(ValueError, match=r'prdc50k_full: the real set: needs at least 6 images, got 5'):
        _evaluate('prdc50k_full', generators['held_out'], path, num_gen=20)


def test_non_finite_features_are_one_clear_error(families, generators, tmp_path):
    class NanDetector(PixelDetector):
        def features(self, images):
            f = super().features(images)
            f[0, 0] = float('nan')
            return f
    path = write_zip(tmp_path / 'small.zip', families['warm'][:30])
    with pytest.raises(ValueError, match=r'memo50k_full: .*non-finite'):
        _evaluate('memo50k_full', generators['held_out'], path, num_gen=20, detector=NanDetector())


def test_the_dataset_reads_part_labels(mixed_set, families, tmp_path):
    path, images, generated = mixed_set
    ds = ImageFolderDataset(path)
    assert (ds.part_labels == generated).all()
    assert ImageFolderDataset(write_zip(tmp_path / 'p.zip', families['warm'][:4])).part_labels is None


def test_memo_and_pull_compare_with_the_training_set(families, generators, mixed_set, tmp_path):
    """The study measures FID against the real subset; memorisation and pull still read the training set."""
    real_only = write_zip(tmp_path / 'real.zip', families['warm'])
    kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=real_only)
    train = dict(kwargs, path=mixed_set[0])
    shared, det = metric_utils.SharedFeatures(), PixelDetector()
    res = {m: metric_main.calc_metric(m, generators['replay'], kwargs, device='cpu', detector=det, num_gen=NUM_GEN,
                                      cache=False, seed=1, shared=shared, training_set_kwargs=train)
           for m in ('fid50k_full', 'memo50k_full', 'pull50k_full')}
    assert res['pull50k_full'].results['pull400_full_base'] == pytest.approx(0.2)
    assert res['memo50k_full'].results['memo400_full'] > 0.99   # replays are copies of *training* images
    assert det.images_seen == NUM_WARM + (NUM_WARM + NUM_COOL) + NUM_GEN  # two real sets, one generated pass
    assert 'no part labels' in _evaluate('pull50k_full', generators['replay'], real_only).skipped


@pytest.mark.parametrize('n_part', [30, 300])  # fewer and more rows than the 192 dimensions
def test_pull_fids_equal_fid_from_the_parts_statistics(n_part):
    from metrics import feature_space
    from metrics.frechet_inception_distance import frechet_distance
    rng = np.random.default_rng(n_part)
    real = rng.normal(size=[n_part + 50, 192]) + np.arange(n_part + 50)[:, None] % 3
    gen = rng.normal(size=[80, 192]) * 1.2

    def stats(x):
        s = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True)
        s.append(x)
        return s
    feats = feature_space.Features(stats(real), stats(gen), 'cpu', 'test')
    rows = torch.arange(n_part + 50) < n_part
    got, unc = feature_space.fid_to(feats, rows)
    part = feats.real[rows].numpy()
    mu_g, sigma_g = stats(gen).get_mean_cov()
    want = frechet_distance(part.mean(0), np.cov(part, rowvar=False, bias=True), mu_g, sigma_g)
    assert got == pytest.approx(want, rel=1e-7)  # (the full-rank form adds roots of rounding-level eigenvalues)
    assert unc['se'] > 0 and unc['replicates'] == 50


def test_the_most_memorised_samples_are_stored_as_images(evaluated, mixed_set):
    """A replaying generator's top samples are training images: the stored thumbnails are those images."""
    import base64
    import PIL.Image
    _, images, _ = mixed_set
    top = evaluated['replay']['memo50k_full'].details['top']
    with_image = [t for t in top if 'image_png' in t]
    assert len(with_image) == memorisation.THUMBNAILS
    for t in with_image:
        img = np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(t['image_png'])))).transpose(2, 0, 1)
        assert t['distance'] == pytest.approx(0, abs=1e-6)
        assert (img == images[t['train_index']]).all()


def test_share_intervals_stay_within_zero_and_one():
    """A rare event (1 of 40 samples) has a normal bootstrap interval reaching below 0: it is clipped."""
    from metrics import feature_space, frechet_inception_distance
    per_row = torch.zeros(40, dtype=torch.float64)
    per_row[7] = 1
    weights = feature_space.bootstrap_weights(40, per_row.device)
    point, record = feature_space.share_interval(per_row, weights)
    lo, hi = record['ci95']
    assert point == 1 / 40 and lo == 0.0 and point < hi < 1
    unclipped = frechet_inception_distance.interval(point, weights @ per_row / 40)
    assert unclipped['ci95'][0] < 0  # what the clip guards against
