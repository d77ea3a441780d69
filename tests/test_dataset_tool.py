"""dataset_tool.py: upstream-compatible conversion, odd-image handling, and the study sets."""

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest

from tests.dataset_tool_helpers import run as _run, noise as _noise, save as _save
from dataset_build import archive, convert, study as dataset_study
from training.dataset import ImageFolderDataset


def _zip_entries(path):
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _report(zip_path):
    return json.loads(_zip_entries(zip_path)[convert.REPORT_NAME])


# ----------------------------------------------------------------------------
# Upstream-compatible conversion.


@pytest.fixture
def rgb_folder(tmp_path):
    root = str(tmp_path / 'src')
    arrays = [_noise((16, 16, 3), i) for i in range(5)]
    for i, a in enumerate(arrays):
        _save(os.path.join(root, f'sub{i % 2}', f'{i}.png'), a)
    # Sorted relative names: sub0/0, sub0/2, sub0/4, sub1/1, sub1/3.
    order = [0, 2, 4, 1, 3]
    return root, [arrays[i] for i in order]


def test_folder_to_zip_roundtrip(rgb_folder, tmp_path):
    root, arrays = rgb_folder
    dest = str(tmp_path / 'out.zip')
    result = _run('--source', root, '--dest', dest, '--workers', 2)
    assert result.exit_code == 0, result.output
    names = sorted(n for n in _zip_entries(dest) if n.endswith('.png'))
    assert names == [f'00000/img{i:08d}.png' for i in range(5)]
    assert json.loads(_zip_entries(dest)['dataset.json']) == {'labels': None}
    ds = ImageFolderDataset(dest)
    assert len(ds) == 5 and ds.resolution == 16
    for i, a in enumerate(arrays):  # PNG in, PNG out, no resize: lossless
        np.testing.assert_array_equal(ds[i][0], a.transpose(2, 0, 1))


def test_output_is_deterministic_across_worker_counts(rgb_folder, tmp_path):
    root, _ = rgb_folder
    a, b = str(tmp_path / 'a.zip'), str(tmp_path / 'b.zip')
    assert _run('--source', root, '--dest', a, '--workers', 1, '--resolution', 8).exit_code == 0
    assert _run('--source', root, '--dest', b, '--workers', 2, '--resolution', 8).exit_code == 0
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        assert fa.read() == fb.read()


def test_folder_destination_and_labels(tmp_path):
    root = str(tmp_path / 'src')
    for i in range(3):
        _save(os.path.join(root, f'{i}.png'), _noise((8, 8, 3), i))
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': [['0.png', 2], ['1.png', 0], ['2.png', 1]]}, f)
    dest = str(tmp_path / 'outdir')
    assert _run('--source', root, '--dest', dest).exit_code == 0
    meta = json.load(open(os.path.join(dest, 'dataset.json')))
    assert meta['labels'] == [['00000/img00000000.png', 2], ['00000/img00000001.png', 0],
                              ['00000/img00000002.png', 1]]
    ds = ImageFolderDataset(dest, use_labels=True)
    np.testing.assert_array_equal([ds.get_details(i).raw_label for i in range(3)], [2, 0, 1])
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')], 'temporary folder left behind'


def test_partial_labels_become_null(tmp_path):
    root = str(tmp_path / 'src')
    for i in range(2):
        _save(os.path.join(root, f'{i}.png'), _noise((8, 8, 3), i))
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': [['0.png', 1]]}, f)
    dest = str(tmp_path / 'out.zip')
    assert _run('--source', root, '--dest', dest).exit_code == 0
    assert json.loads(_zip_entries(dest)['dataset.json']) == {'labels': None}


def test_center_crop_keeps_the_central_square(tmp_path):
    # 24x16 image: central 16x16 square is grey 100, the 4-pixel side bands are 250.
    arr = np.full((16, 24, 3), 250, np.uint8)
    arr[:, 4:20] = 100
    root = str(tmp_path / 'src')
    _save(os.path.join(root, 'wide.png'), arr)
    dest = str(tmp_path / 'out.zip')
    assert _run('--source', root, '--dest', dest, '--transform', 'center-crop', '--width', 16, '--height', 16).exit_code == 0
    np.testing.assert_array_equal(ImageFolderDataset(dest)[0][0], np.full((3, 16, 16), 100, np.uint8))


def test_box_filter_averages_blocks(tmp_path):
    arr = _noise((16, 16, 3), 3)
    root = str(tmp_path / 'src')
    _save(os.path.join(root, 'x.png'), arr)
    dest = str(tmp_path / 'out.zip')
    assert _run('--source', root, '--dest', dest, '--width', 8, '--height', 8, '--resize-filter', 'box').exit_code == 0
    expected = arr.reshape(8, 2, 8, 2, 3).astype(np.float64).mean(axis=(1, 3)).transpose(2, 0, 1)
    got = ImageFolderDataset(dest)[0][0].astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0  # 2x2 mean; PIL rounds in fixed point (off by <= 1)


def test_center_crop_wide_letterboxes(tmp_path):
    # 32x16 source, --width 16 --height 8: full-width band of 8 rows pasted into a black 16x16 canvas.
    arr = np.full((16, 32, 3), 200, np.uint8)
    root = str(tmp_path / 'src')
    _save(os.path.join(root, 'pano.png'), arr)
    dest = str(tmp_path / 'out.zip')
    assert _run('--source', root, '--dest', dest, '--transform', 'center-crop-wide',
                '--width', 16, '--height', 8).exit_code == 0
    img = ImageFolderDataset(dest)[0][0]
    assert img.shape == (3, 16, 16)
    assert (img[:, :4] == 0).all() and (img[:, 12:] == 0).all() and (img[:, 4:12] == 200).all()


def test_max_images_caps_inputs(rgb_folder, tmp_path):
    root, _ = rgb_folder
    dest = str(tmp_path / 'out.zip')
    assert _run('--source', root, '--dest', dest, '--max-images', 3).exit_code == 0
    assert len(ImageFolderDataset(dest)) == 3


def test_odd_images_are_converted_or_skipped_and_reported(tmp_path):
    root = str(tmp_path / 'src')
    _save(os.path.join(root, 'a_good.png'), _noise((16, 16, 3), 0))
    # CMYK JPEG.
    _save(os.path.join(root, 'b_cmyk.jpg'), PIL.Image.new('CMYK', (16, 16), (0, 0, 0, 0)), quality=95)
    # RGBA: left half opaque red, right half fully transparent green.
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)
    rgba[:, 8:] = (0, 255, 0, 0)
    _save(os.path.join(root, 'c_rgba.png'), rgba)
    # 16-bit grayscale: two levels.
    gray16 = np.full((16, 16), 65535, np.uint16)
    gray16[8:] = 32896
    _save(os.path.join(root, 'd_gray16.png'), PIL.Image.fromarray(gray16))
    # Palette.
    _save(os.path.join(root, 'e_palette.png'), PIL.Image.fromarray(_noise((16, 16, 3), 5)).convert('P'))
    # Truncated JPEG and garbage bytes.
    buf = io.BytesIO()
    PIL.Image.fromarray(_noise((16, 16, 3), 6)).save(buf, format='jpeg')
    with open(os.path.join(root, 'f_truncated.jpg'), 'wb') as f:
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
    with open(os.path.join(root, 'g_garbage.png'), 'wb') as f:
        f.write(b'this is not an image at all' * 10)
    # A good image of the wrong size (no resize requested): skipped, not fatal.
    _save(os.path.join(root, 'h_small.png'), _noise((8, 8, 3), 7))
    # A PNG named .jpg: read by its content, noted. Non-images: counted as ignored.
    _save(os.path.join(root, 'i_png_named.jpg'), _noise((16, 16, 3), 8), format='png')
    for junk in ('.DS_Store', 'Thumbs.db', 'notes.txt'):
        with open(os.path.join(root, junk), 'wb') as f:
            f.write(b'\0\1 not an image')

    dest = str(tmp_path / 'out.zip')
    result = _run('--source', root, '--dest', dest, '--workers', 2)
    assert result.exit_code == 0, result.output
    report = _report(dest)
    converted = {e['name'] for e in report['converted']}
    skipped = {e['name'] for e in report['skipped']}
    assert converted == {'b_cmyk.jpg', 'c_rgba.png', 'd_gray16.png', 'e_palette.png', 'i_png_named.jpg'}
    assert skipped == {'f_truncated.jpg', 'g_garbage.png', 'h_small.png'}
    assert report['num_input'] == 9 and report['num_written'] == 6
    assert report['ignored'] == ['.DS_Store', 'Thumbs.db', 'notes.txt']
    assert '3 other files ignored' in result.output and 'ignored: .DS_Store, Thumbs.db, notes.txt' in result.output
    assert {e['note'] for e in report['converted'] if e['name'] == 'i_png_named.jpg'} == \
        {'named .jpg but the content is PNG'}
    assert '<_io.' not in result.output and 'object at 0x' not in result.output
    assert any('truncated' in e['reason'] for e in report['skipped'] if e['name'] == 'f_truncated.jpg')
    for name in converted | skipped:  # the printed report names every one
        assert name in result.output

    ds = ImageFolderDataset(dest)
    names = ds.image_fnames  # the written ones keep their input index
    assert names == [archive.archive_name(i) for i in range(5)] + [archive.archive_name(8)]
    rgba_out = ds[2][0]
    assert (rgba_out[:, :, :8] == np.array([255, 0, 0])[:, None, None]).all()
    assert (rgba_out[:, :, 8:] == 0).all()  # transparent -> black
    gray_out = ds[3][0]
    assert (gray_out[:, :8] == 255).all() and (gray_out[:, 8:] == 128).all()  # 65535 -> 255, 32896 -> 128
    assert (gray_out[0] == gray_out[1]).all()  # grey promoted to RGB to match the dataset


def test_existing_destination_needs_overwrite(rgb_folder, tmp_path):
    root, _ = rgb_folder
    dest = str(tmp_path / 'out.zip')
    with open(dest, 'wb') as f:
        f.write(b'precious')
    result = _run('--source', root, '--dest', dest)
    assert result.exit_code == 1 and '--dest' in result.output and 'overwrite' in result.output
    assert open(dest, 'rb').read() == b'precious'
    assert _run('--source', root, '--dest', dest, '--overwrite').exit_code == 0
    assert len(ImageFolderDataset(dest)) == 5


def test_user_errors_are_one_line(tmp_path, rgb_folder):
    root, _ = rgb_folder
    dest = str(tmp_path / 'x.zip')
    r = _run('--source', tmp_path / 'missing', '--dest', dest)
    assert r.exit_code == 2 and '--source' in r.output  # a usage error (docs/exit-codes.md)
    r = _run('--source', root, '--dest', dest, '--width', 12, '--height', 12)
    assert r.exit_code == 1 and 'power of two' in r.output
    r = _run('--source', root, '--dest', dest, '--width', 16, '--height', 8)
    assert r.exit_code == 1 and 'square' in r.output
    r = _run('--source', root, '--dest', dest, '--transform', 'center-crop')
    assert r.exit_code == 2 and '--width' in r.output
    assert _run('--dest', dest).exit_code == 2  # missing --source
    r = _run('--source', root, 'verify', 'x.json')
    assert r.exit_code == 2 and '--source' in r.output
    assert not os.path.exists(dest)
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')], 'temporary file left behind'


def test_finder_zips_resource_forks_are_not_images(tmp_path):
    src_zip = str(tmp_path / 'mac.zip')
    png = io.BytesIO()
    PIL.Image.fromarray(_noise((8, 8, 3), 0)).save(png, format='png')
    with zipfile.ZipFile(src_zip, 'w') as zf:
        zf.writestr('faces/0.png', png.getvalue())
        zf.writestr('faces/._0.png', b'\0\5\x16\7 AppleDouble')  # image extension, not an image
        zf.writestr('__MACOSX/faces/._0.png', b'\0\5\x16\7 AppleDouble')
    result = _run('--source', src_zip, '--dest', tmp_path / 'out.zip')
    assert result.exit_code == 0, result.output
    report = _report(str(tmp_path / 'out.zip'))
    assert report['num_input'] == 1 and report['skipped'] == []
    assert report['ignored'] == ['__MACOSX/faces/._0.png', 'faces/._0.png']


def test_zip_source_and_mnist_and_cifar(tmp_path):
    # Zip source.
    src_zip = str(tmp_path / 'in.zip')
    with zipfile.ZipFile(src_zip, 'w') as zf:
        for i in range(2):
            buf = io.BytesIO()
            PIL.Image.fromarray(_noise((8, 8, 3), i)).save(buf, format='png')
            zf.writestr(f'd/{i}.png', buf.getvalue())
    assert _run('--source', src_zip, '--dest', tmp_path / 'z.zip').exit_code == 0
    np.testing.assert_array_equal(ImageFolderDataset(str(tmp_path / 'z.zip'))[1][0],
                                  _noise((8, 8, 3), 1).transpose(2, 0, 1))

    # MNIST: 28x28 grayscale zero-padded to 32x32, labels from the sibling file.
    mdir = tmp_path / 'mnist'
    mdir.mkdir()
    digits = _noise((3, 28, 28), 9)
    with gzip.open(mdir / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(b'\0' * 16 + digits.tobytes())
    with gzip.open(mdir / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(b'\0' * 8 + bytes([7, 1, 4]))
    dest = str(tmp_path / 'mnist.zip')
    assert _run('--source', mdir / 'train-images-idx3-ubyte.gz', '--dest', dest).exit_code == 0
    ds = ImageFolderDataset(dest, use_labels=True)
    assert ds.image_shape == [1, 32, 32]
    np.testing.assert_array_equal(ds[2][0][0, 2:30, 2:30], digits[2])
    assert ds[2][0][0, :2].max() == 0
    assert [int(ds.get_details(i).raw_label) for i in range(3)] == [7, 1, 4]

    # CIFAR-10: five pickled batches, NCHW rows.
    path = str(tmp_path / 'cifar-10-python.tar.gz')
    batches = [_noise((2, 3 * 32 * 32), 20 + b) for b in range(5)]
    with tarfile.open(path, 'w:gz') as tar:
        for b, data in enumerate(batches):
            blob = pickle.dumps({'data': data, 'labels': [b, 9 - b]})
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b + 1}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    dest = str(tmp_path / 'cifar.zip')
    assert _run('--source', path, '--dest', dest).exit_code == 0
    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 10 and ds.image_shape == [3, 32, 32] and ds.label_dim == 10
    np.testing.assert_array_equal(ds[3][0], batches[1][1].reshape(3, 32, 32))
    assert int(ds.get_details(3).raw_label) == 8


# ----------------------------------------------------------------------------
# Study sets.

K, N, M, R = 3, 5, 2, 32


def _make_pools(tmp_path, num_real=18, num_gen=8, nested=True):
    """Fake CelebAMask-HQ (64x64 JPEGs named <index>.jpg) and a generated pool (48x48 and 80x80 PNGs)."""
    celeba = tmp_path / 'CelebAMask-HQ'
    img_dir = celeba / 'CelebA-HQ-img' if nested else celeba
    for i in range(num_real):
        _save(str(img_dir / f'{i}.jpg'), _noise((64, 64, 3), 1000 + i), quality=90)
    gen = tmp_path / 'generated'
    for i in range(num_gen):
        side = 48 if i % 2 else 80
        _save(str(gen / f'batch{i % 2}' / f'sd_{i:03d}.png'), _noise((side, side, 3), 5000 + i))
    return str(celeba), str(gen)


def _build(celeba, gen, dest, *extra):
    return _run('celebamask', '--celeba-dir', celeba, '--generated-dir', gen, '--dest', dest,
                '--num-subsets', K, '--subset-size', N, '--num-generated', M, '--resolution', R,
                '--seed', 3, '--workers', 2, *extra)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('study')
    celeba, gen = _make_pools(tmp)
    dest = str(tmp / 'out')
    result = _build(celeba, gen, dest)
    assert result.exit_code == 0, result.output
    return celeba, gen, dest, tmp


def _manifest(dest, name):
    return json.load(open(dataset_study.manifest_path(dest, name)))


def test_study_counts_disjointness_and_mix_ratio(study):
    celeba, gen, dest, _ = study
    real_sources, gen_sources = [], []
    for k in range(1, K + 1):
        real, mix = _manifest(dest, f'CelebAMask-HQ{k}'), _manifest(dest, f'Mix-dataset{k}')
        assert real['counts'] == {'real': N, 'generated': 0}
        assert mix['counts'] == {'real': N - M, 'generated': M}
        real_sources.append({e['source'] for e in real['images']})
        gen_sources += [e['source'] for e in mix['images'] if e['kind'] == 'generated']
        # The mix keeps the real set's slots; real entries are the same bytes.
        real_by_slot = {e['archive_name']: e for e in real['images']}
        assert [e['archive_name'] for e in mix['images']] == sorted(real_by_slot)
        same = [e for e in mix['images'] if e['kind'] == 'real']
        assert all(real_by_slot[e['archive_name']]['sha256'] == e['sha256'] for e in same)
        for name in (f'CelebAMask-HQ{k}', f'Mix-dataset{k}'):
            ds = ImageFolderDataset(os.path.join(dest, name + '.zip'))
            assert len(ds) == N and ds.resolution == R and ds.num_channels == 3
    union = set().union(*real_sources)
    assert len(union) == K * N  # disjoint subsets
    assert len(set(gen_sources)) == K * M  # no generated image used twice


def test_study_manifests_match_files(study):
    celeba, gen, dest, _ = study
    for name in dataset_study.set_names(K):
        m = _manifest(dest, name)
        zip_path = os.path.join(dest, m['zip'])
        assert hashlib.sha256(open(zip_path, 'rb').read()).hexdigest() == m['zip_sha256']
        entries = _zip_entries(zip_path)
        assert m['options']['seed'] == 3 and m['options']['resolution'] == R
        assert m['options']['resize_filter'] == 'lanczos'
        for e in m['images']:
            root = m['options']['celeba_dir'] if e['kind'] == 'real' else m['options']['generated_dir']
            src = open(os.path.join(root, e['source']), 'rb').read()
            assert hashlib.sha256(src).hexdigest() == e['source_sha256']
            assert hashlib.sha256(entries[e['archive_name']]).hexdigest() == e['sha256']
    assert _run('verify', *[dataset_study.manifest_path(dest, n) for n in dataset_study.set_names(K)]).exit_code == 0


def test_study_is_byte_identical_when_rebuilt(study):
    celeba, gen, dest, tmp = study
    again = str(tmp / 'again')
    assert _run('celebamask', '--celeba-dir', celeba, '--generated-dir', gen, '--dest', again,
                '--num-subsets', K, '--subset-size', N, '--num-generated', M, '--resolution', R,
                '--seed', 3, '--workers', 1).exit_code == 0
    for name in dataset_study.set_names(K):
        a = open(os.path.join(dest, name + '.zip'), 'rb').read()
        b = open(os.path.join(again, name + '.zip'), 'rb').read()
        assert a == b, name


def test_study_generated_stats_csv(study):
    _, _, dest, _ = study
    rows = list(csv.DictReader(open(os.path.join(dest, dataset_study.STATS_NAME))))
    assert len(rows) == K * M
    for row in rows:
        assert row['width'] == row['height'] and int(row['width']) in (48, 80)
        assert 0 <= float(row['mean_r']) <= 255 and float(row['aspect']) == 1.0


def test_study_accepts_image_folder_itself(tmp_path):
    celeba, gen = _make_pools(tmp_path, nested=False)
    assert _build(celeba, gen, str(tmp_path / 'flat')).exit_code == 0
    assert _manifest(str(tmp_path / 'flat'), 'CelebAMask-HQ1')['options']['celeba_dir'] == os.path.abspath(celeba)


def test_verify_detects_changed_source_and_zip(study, tmp_path):
    celeba, gen, dest, _ = study
    copy = str(tmp_path / 'copy')
    shutil.copytree(dest, copy)
    gen_copy = str(tmp_path / 'gen')
    shutil.copytree(gen, gen_copy)
    m = _manifest(copy, 'Mix-dataset1')
    victim = next(e for e in m['images'] if e['kind'] == 'generated')
    _save(os.path.join(gen_copy, victim['source']), _noise((48, 48, 3), 1))
    r = _run('verify', os.path.join(copy, 'Mix-dataset1.zip'), '--generated-dir', gen_copy, '--sources-only')
    assert r.exit_code == 1 and victim['source'] in r.output
    with zipfile.ZipFile(os.path.join(copy, 'CelebAMask-HQ2.zip'), 'a') as zf:
        zf.writestr('extra.txt', b'x')
    r = _run('verify', os.path.join(copy, 'CelebAMask-HQ2.manifest.json'))
    assert r.exit_code == 1 and 'differs' in r.output


def test_study_errors(tmp_path):
    celeba, gen = _make_pools(tmp_path, num_real=K * N, num_gen=K * M)
    r = _run('celebamask', '--celeba-dir', celeba, '--generated-dir', gen, '--dest', tmp_path / 'o',
             '--num-subsets', K, '--subset-size', N + 1, '--num-generated', M, '--resolution', R)
    assert r.exit_code == 1 and '--celeba-dir' in r.output and 'need' in r.output
    r = _run('celebamask', '--celeba-dir', celeba, '--generated-dir', gen, '--dest', tmp_path / 'o',
             '--num-subsets', K, '--subset-size', N, '--num-generated', M + 1, '--resolution', R)
    assert r.exit_code == 1 and '--generated-dir' in r.output

    # Every pool image is selected here, so a generated copy of a real image must be caught.
    dup = os.path.join(gen, 'batch0', 'sd_000.png')
    shutil.copyfile(os.path.join(celeba, 'CelebA-HQ-img', '4.jpg'), dup)
    r = _build(celeba, gen, str(tmp_path / 'o'))
    assert r.exit_code == 1 and 'byte-identical' in r.output and 'sd_000.png' in r.output
    _save(dup, _noise((40, 48, 3), 77))  # non-square
    r = _build(celeba, gen, str(tmp_path / 'o'))
    assert r.exit_code == 1 and 'not square' in r.output and '48x40' in r.output

    _save(dup, _noise((48, 48, 3), 77))
    # A truncated JPEG is found by the planning pass (every file is fully decoded): nothing is written.
    victim = os.path.join(celeba, 'CelebA-HQ-img', '7.jpg')
    data = open(victim, 'rb').read()
    open(victim, 'wb').write(data[:len(data) // 2])
    r = _build(celeba, gen, str(tmp_path / 't'))
    assert r.exit_code == 1 and '7.jpg' in r.output and 'truncated' in r.output
    assert not os.path.exists(tmp_path / 't') and not [n for n in os.listdir(tmp_path) if n.startswith('.')]
    open(victim, 'wb').write(data)

    assert _build(celeba, gen, str(tmp_path / 'o')).exit_code == 0
    r = _build(celeba, gen, str(tmp_path / 'o'))
    assert r.exit_code == 1 and 'overwrite' in r.output
    assert _build(celeba, gen, str(tmp_path / 'o'), '--overwrite').exit_code == 0


def test_study_without_generated_builds_real_sets_only(tmp_path):
    celeba, _ = _make_pools(tmp_path, num_gen=0)
    dest = str(tmp_path / 'o')
    r = _run('celebamask', '--celeba-dir', celeba, '--dest', dest, '--num-subsets', 2, '--subset-size', 4,
             '--num-generated', 0, '--resolution', 16)
    assert r.exit_code == 0, r.output
    assert sorted(n for n in os.listdir(dest) if n.endswith('.zip')) == ['CelebAMask-HQ1.zip', 'CelebAMask-HQ2.zip']
