"""training.dataset: the reader used by training and the metrics (upstream's on-disk format)."""

import io
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest

from training.dataset import ImageFolderDataset


def _write_png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(arr).save(path)


def _make_folder(root, n=6, res=8, channels=3, labels=None, seed=0):
    """n random PNGs under two sub-folders; returns {relpath: HWC array} in sorted order."""
    rng = np.random.RandomState(seed)
    images = {}
    for i in range(n):
        rel = f'{"ab"[i % 2]}/img{i:02d}.png'
        shape = (res, res, channels) if channels > 1 else (res, res)
        images[rel] = rng.randint(0, 256, size=shape, dtype=np.uint8)
        _write_png(os.path.join(root, rel), images[rel])
    if labels is not None:
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump({'labels': [[rel, lab] for rel, lab in zip(sorted(images), labels)]}, f)
    return dict(sorted(images.items()))


def _zip_folder(root, zip_path):
    with zipfile.ZipFile(zip_path, 'w') as zf:
        for dirpath, _d, files in os.walk(root):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.relpath(full, root).replace(os.sep, '/'))
    return zip_path


def _chw(arr):
    return (arr[:, :, None] if arr.ndim == 2 else arr).transpose(2, 0, 1)


@pytest.fixture
def folder(tmp_path):
    root = str(tmp_path / 'faces')
    return root, _make_folder(root, labels=[0, 2, 1, 2, 0, 1])


def test_items_are_the_files_in_sorted_order(folder):
    root, images = folder
    ds = ImageFolderDataset(root)
    assert ds.name == 'faces'
    assert len(ds) == 6 and ds.image_shape == [3, 8, 8] and ds.resolution == 8 and ds.num_channels == 3
    for i, arr in enumerate(images.values()):
        img, label = ds[i]
        assert img.dtype == np.uint8
        np.testing.assert_array_equal(img, _chw(arr))
        assert label.dtype == np.float32 and label.shape == (0,)  # use_labels=False


def test_zip_and_folder_agree(folder, tmp_path):
    root, images = folder
    a = ImageFolderDataset(root, use_labels=True)
    b = ImageFolderDataset(_zip_folder(root, str(tmp_path / 'faces.zip')), use_labels=True)
    assert len(a) == len(b) and b.name == 'faces'
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    # Same names and bytes: the same content hash wherever and however it is stored.
    assert a.content_hash() == b.content_hash()


def test_grayscale_has_one_channel(tmp_path):
    images = _make_folder(str(tmp_path / 'gray'), n=2, channels=1)
    ds = ImageFolderDataset(str(tmp_path / 'gray'))
    assert ds.image_shape == [1, 8, 8]
    np.testing.assert_array_equal(ds[1][0], _chw(list(images.values())[1]))


def test_max_size_is_a_sorted_seeded_subset(folder):
    root, _ = folder
    for seed in (0, 1, 7):
        ds = ImageFolderDataset(root, max_size=4, random_seed=seed)
        raw = [ds.get_details(i).raw_idx for i in range(len(ds))]
        perm = np.random.RandomState(seed).permutation(6)  # upstream: shuffle, keep first max_size, sort
        assert raw == sorted(perm[:4].tolist())
    assert len(ImageFolderDataset(root, max_size=100)) == 6  # larger than the dataset: everything


def test_xflip_doubles_with_mirrored_copies(folder):
    root, _ = folder
    ds = ImageFolderDataset(root, xflip=True, max_size=3)
    assert len(ds) == 6
    for i in range(3):
        a, b = ds[i][0], ds[i + 3][0]
        np.testing.assert_array_equal(b, a[:, :, ::-1])
        assert ds.get_details(i).raw_idx == ds.get_details(i + 3).raw_idx
        assert (ds.get_details(i).xflip, ds.get_details(i + 3).xflip) == (False, True)


def test_class_labels_become_one_hot(folder):
    root, _ = folder
    ds = ImageFolderDataset(root, use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels and ds.label_dim == 3 and ds.label_shape == [3]
    expected = [0, 2, 1, 2, 0, 1]
    for i, c in enumerate(expected):
        np.testing.assert_array_equal(ds.get_label(i), np.eye(3, dtype=np.float32)[c])
        assert ds.get_details(i).raw_label == c


def test_vector_labels_and_missing_labels(tmp_path):
    root = str(tmp_path / 'vec')
    vectors = [[0.5, -1.0], [2.0, 0.25]]
    _make_folder(root, n=2, labels=vectors)
    ds = ImageFolderDataset(root, use_labels=True)
    assert not ds.has_onehot_labels and ds.label_dim == 2
    np.testing.assert_array_equal(ds[1][1], np.array(vectors[1], dtype=np.float32))

    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': [['a/img00.png', [0.5, -1.0]]]}, f)  # b/img01.png has none
    with pytest.raises(KeyError, match='b/img01.png'):
        ImageFolderDataset(root, use_labels=True).get_label(0)


def test_null_labels_mean_unlabelled(tmp_path):
    root = str(tmp_path / 'null')
    _make_folder(root, n=2)
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': None}, f)
    ds = ImageFolderDataset(root, use_labels=True)
    assert not ds.has_labels and ds.label_dim == 0


def test_pickled_zip_dataset_reopens_lazily(folder, tmp_path):
    root, images = folder
    ds = ImageFolderDataset(_zip_folder(root, str(tmp_path / 'faces.zip')))
    ds[0]  # opens the zip
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives
    assert clone._zipfile is None
    np.testing.assert_array_equal(clone[5][0], _chw(list(images.values())[5]))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        ImageFolderDataset(str(tmp_path / 'nowhere'))
    os.makedirs(tmp_path / 'empty')
    (tmp_path / 'empty' / 'notes.txt').write_text('x')
    with pytest.raises(IOError, match='no image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))

    root = str(tmp_path / 'mixed')
    _make_folder(root, n=3)
    with pytest.raises(IOError, match=r'resolution 16 \(a/img00.png is 8x8\)'):
        ImageFolderDataset(root, resolution=16)
    _write_png(os.path.join(root, 'b', 'img99.png'), np.zeros((4, 4, 3), np.uint8))
    ds = ImageFolderDataset(root)
    with pytest.raises(IOError, match='b/img99.png has shape'):
        ds[len(ds) - 1]


def test_macos_resource_forks_are_ignored(folder, tmp_path):
    root, _ = folder
    zip_path = _zip_folder(root, str(tmp_path / 'faces.zip'))
    with zipfile.ZipFile(zip_path, 'a') as zf:
        zf.writestr('__MACOSX/a/._img00.png', b'\0\5\x16\7 not an image')
        zf.writestr('a/._img00.png', b'\0\5\x16\7 not an image')
    assert len(ImageFolderDataset(zip_path)) == 6


def test_content_hash_tracks_content_not_location(folder, tmp_path):
    root, images = folder
    h = ImageFolderDataset(root).content_hash()
    assert len(h) == 64 and h == ImageFolderDataset(root).content_hash()

    moved = str(tmp_path / 'elsewhere' / 'faces_copy')
    shutil.copytree(root, moved)
    assert ImageFolderDataset(moved).content_hash() == h  # path and name do not matter

    arr = images['b/img03.png'].copy()
    arr[0, 0, 0] ^= 1  # one pixel, one bit
    _write_png(os.path.join(moved, 'b', 'img03.png'), arr)
    changed = ImageFolderDataset(moved).content_hash()
    assert changed != h

    shutil.copyfile(os.path.join(root, 'b', 'img03.png'), os.path.join(moved, 'b', 'img03.png'))
    assert ImageFolderDataset(moved).content_hash() == h  # restored

    os.rename(os.path.join(moved, 'b', 'img03.png'), os.path.join(moved, 'b', 'img03b.png'))
    assert ImageFolderDataset(moved).content_hash() != h  # a renamed file changes the order/identity

    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump({'labels': None}, f)
    assert ImageFolderDataset(root).content_hash() != h  # labels are part of the content


def test_content_hash_cached_per_instance(folder):
    root, _ = folder
    ds = ImageFolderDataset(root)
    h = ds.content_hash()
    os.remove(os.path.join(root, 'a', 'img00.png'))
    assert ds.content_hash() == h  # no re-read: computed once


def test_zip_reads_are_correct_in_forked_dataloader_workers(tmp_path):
    """The parent's open zip handle must not be shared by forked workers (shared offset -> bad CRC)."""
    import multiprocessing

    import torch
    from PIL import Image

    path = tmp_path / 'set.zip'
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, 'w') as zf:
        for i in range(24):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format='PNG')
            zf.writestr(f'{i:05d}.png', buf.getvalue())
    from training.dataset import ImageFolderDataset
    ds = ImageFolderDataset(str(path))
    expected = [ds[i][0] for i in range(len(ds))]  # opens the zip in the parent first
    if 'fork' not in multiprocessing.get_all_start_methods():
        pytest.skip('fork start method not available')
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2,
                                         multiprocessing_context='fork')
    got = [img[0].numpy() for img, _ in loader]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got)) and len(got) == len(expected)
