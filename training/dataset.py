"""Datasets that training and the metrics read: a folder or a zip of same-sized images.

On-disk format (upstream's): image files anywhere below the root, ordered by their relative
path (that order is the raw index), plus an optional `dataset.json` at the root holding
`{"labels": [[relpath, label], ...]}` or `{"labels": null}`. Sets that mix real and generated images
(dataset_tool.py celebamask) add `"generated": [relpath, ...]`, the generated images' names; upstream
reads only "labels" and ignores the key.

`Dataset` implements the index bookkeeping shared by every source (random subset, x-flip doubling,
labels); `ImageFolderDataset` supplies the raw images and labels from a folder or a zip.
"""

import hashlib
import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch

import dnnlib
from dnnlib.util import image_extensions, is_image_name

_HASH_CHUNK = 1 << 20  # 1 MiB reads keep the hash streaming without holding whole images twice.


# ----------------------------------------------------------------------------


class Dataset(torch.utils.data.Dataset):
    """Index bookkeeping over a raw image source.

    Item `i` maps to a raw image index and an x-flip flag. With `max_size` < the raw count, a random
    subset (RandomState(random_seed)) is kept, then sorted so it stays in file order. `xflip` appends a
    mirrored copy of every kept image, doubling the length.

    Subclasses implement `_load_raw_image(raw_idx)` (uint8 CHW ndarray) and `_load_raw_labels()`
    (None, an int array [N] of class indices, or a float array [N, D]).
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0):
        """
        Args:
            name: Short name (file name without extension); used in run names and metric caches.
            raw_shape: [N, C, H, W] of the whole raw source.
            max_size: Keep at most this many raw images (a seeded random subset); None keeps all.
            use_labels: Return the labels; otherwise items carry a zero-length label.
            xflip: Double the dataset with horizontally mirrored copies.
            random_seed: Seed of the subset choice.
        """
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._raw_labels = None
        self._label_shape = None

        # The kept raw indices, in file order.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        # x-flip: the kept list twice, the second copy flagged as mirrored.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    # -- labels ---------------------------------------------------------------

    def _get_raw_labels(self):
        """Labels of every raw image: int64 [N] class indices, float32 [N, D], or float32 [N, 0]."""
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            labels = np.asarray(labels)
            if labels.shape[0] != self._raw_shape[0]:
                raise IOError(f'{self._name}: {labels.shape[0]} labels for {self._raw_shape[0]} images')
            if labels.dtype == np.int64:
                if labels.ndim != 1 or (labels.size and labels.min() < 0):
                    raise IOError(f'{self._name}: class labels must be a flat list of integers >= 0')
            elif labels.dtype == np.float32:
                if labels.ndim != 2:
                    raise IOError(f'{self._name}: label vectors must form an [N, D] array')
            else:
                raise IOError(f'{self._name}: labels must be int64 class indices or float32 vectors')
            self._raw_labels = labels
        return self._raw_labels

    # -- hooks for subclasses ---------------------------------------------------

    def close(self):
        """Release open file handles (reopened on next access)."""

    def _load_raw_image(self, raw_idx):  # -> uint8 ndarray [C, H, W]
        raise NotImplementedError

    def _load_raw_labels(self):  # -> None or ndarray
        raise NotImplementedError

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    # -- access -----------------------------------------------------------------

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        """(uint8 ndarray [C, H, W], label) for item `idx`; the image is a fresh copy."""
        image = self._load_raw_image(self._raw_idx[idx])
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and list(image.shape) == self.image_shape):
            raise IOError(f'{self._name}: raw image {self._raw_idx[idx]} has shape '
                          f'{getattr(image, "shape", None)} / dtype {getattr(image, "dtype", None)}, '
                          f'expected uint8 {self.image_shape}')
        if self._xflip[idx]:
            image = image[:, :, ::-1]  # [CHW]: mirror along W
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        """float32 label of item `idx`: one-hot [label_dim] for class labels, the vector otherwise."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    @property
    def part_labels(self):
        """bool [len(self)]: which items are generated images, or None when the set does not record it."""
        raw = self._load_raw_parts()
        return None if raw is None else np.asarray(raw, bool)[self._raw_idx]

    def _load_raw_parts(self):  # -> None or bool ndarray [raw count]
        return None

    def get_details(self, idx):
        """EasyDict-like record of where item `idx` comes from: raw_idx, xflip, raw_label."""
        return dnnlib.EasyDict(raw_idx=int(self._raw_idx[idx]), xflip=(int(self._xflip[idx]) != 0),
                        raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy())

    # -- properties -------------------------------------------------------------

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3  # [CHW]
        return self.image_shape[0]

    @property
    def resolution(self):
        assert len(self.image_shape) == 3  # [CHW]
        assert self.image_shape[1] == self.image_shape[2], 'images are not square'
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw = self._get_raw_labels()
            if raw.dtype == np.int64:
                self._label_shape = [int(raw.max()) + 1 if raw.size else 0]
            else:
                self._label_shape = list(raw.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64


# ----------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Images from a directory (recursive) or a .zip, with labels from `dataset.json`.

    Decoding uses PIL; a 2-D (grayscale) array becomes one channel. Every image must have the shape of
    the first one. The zip handle is opened lazily in each process and never pickled, so DataLoader
    workers each get their own.
    """

    def __init__(self, path, resolution=None, **super_kwargs):
        """
        Args:
            path: Dataset directory or .zip file.
            resolution: Expected side length; a mismatch raises IOError naming the first image.
            **super_kwargs: max_size, use_labels, xflip, random_seed (see `Dataset`).
        """
        self._path = os.fspath(path)
        self._zipfile = None
        self._zipfile_pid = None
        self._content_hash = None

        if os.path.isdir(self._path):
            self._type = 'dir'
            self._all_fnames = self._walk_dir(self._path)
        elif os.path.isfile(self._path) and self._path.lower().endswith('.zip'):
            self._type = 'zip'
            try:
                self._all_fnames = set(self._get_zipfile().namelist())
            except zipfile.BadZipFile as e:
                raise IOError(f'{self._path}: not a valid zip file ({e})') from e
        elif not os.path.exists(self._path):
            raise FileNotFoundError(f'Dataset not found: {self._path}')
        else:
            raise IOError(f'{self._path}: a dataset must be a directory or a .zip file')

        extensions = image_extensions()
        self._image_fnames = sorted(f for f in self._all_fnames if is_image_name(f, extensions))
        if not self._image_fnames:
            raise IOError(f'{self._path}: no image files found')

        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        first = self._load_raw_image(0)
        raw_shape = [len(self._image_fnames)] + list(first.shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise IOError(f'{self._path}: image files do not match the specified resolution {resolution} '
                          f'({self._image_fnames[0]} is {raw_shape[3]}x{raw_shape[2]})')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

    # -- file access ------------------------------------------------------------

    @staticmethod
    def _walk_dir(root):
        names = set()
        for dirpath, _dirs, files in os.walk(root):
            for fname in files:
                rel = os.path.relpath(os.path.join(dirpath, fname), root)
                names.add(rel.replace(os.sep, '/'))
        return names

    def _get_zipfile(self):
        assert self._type == 'zip'
        # A forked DataLoader worker inherits the parent's open handle, and with it the shared file
        # offset: concurrent reads then corrupt each other ("Bad CRC-32"). Reopen once per process.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def _file_size(self, fname):
        if self._type == 'dir':
            return os.path.getsize(os.path.join(self._path, fname))
        return self._get_zipfile().getinfo(fname).file_size

    def close(self):
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        return dict(self.__dict__, _zipfile=None)  # each DataLoader worker reopens the zip itself

    # -- raw data ---------------------------------------------------------------

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        try:
            with self._open_file(fname) as f:
                image = np.array(PIL.Image.open(f))
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt files
            raise IOError(f'{self._path}: cannot decode {fname}: {e}') from e
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # HW => HWC
        image = image.transpose(2, 0, 1)  # HWC => CHW
        if hasattr(self, '_raw_shape') and list(image.shape) != self._raw_shape[1:]:
            raise IOError(f'{self._path}: {fname} has shape {list(image.shape)} (CHW), '
                          f'expected {self._raw_shape[1:]} like {self._image_fnames[0]}')
        if image.dtype != np.uint8:
            raise IOError(f'{self._path}: {fname} is {image.dtype}, expected 8-bit (convert it with dataset_tool.py)')
        return image

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        with self._open_file(fname) as f:
            labels = json.load(f).get('labels')
        if labels is None:
            return None
        labels = dict(labels)
        missing = [f for f in self._image_fnames if f.replace('\\', '/') not in labels]
        if missing:
            raise KeyError(f'{self._path}: dataset.json has no label for {missing[0]} '
                           f'({len(missing)} image(s) unlabelled)')
        labels = np.array([labels[f.replace('\\', '/')] for f in self._image_fnames])
        return labels.astype({1: np.int64, 2: np.float32}[labels.ndim])

    def _load_raw_parts(self):
        if 'dataset.json' not in self._all_fnames:
            return None
        with self._open_file('dataset.json') as f:
            names = json.load(f).get('generated')
        if names is None:
            return None
        names = {str(n).replace('\\', '/') for n in names}
        return np.array([f.replace('\\', '/') in names for f in self._image_fnames], bool)

    # -- content identity ---------------------------------------------------------

    @property
    def image_fnames(self):
        """Relative names of the image files, in raw-index order."""
        return list(self._image_fnames)

    def content_hash(self):
        """sha256 hex over the sorted file names and the bytes of every image file and dataset.json.

        The key of the metrics' real-statistics cache: it changes when any pixel, name or label changes
        and not when the dataset moves. Computed once per instance (it reads every byte).
        """
        if self._content_hash is None:
            names = list(self._image_fnames)
            if 'dataset.json' in self._all_fnames:
                names.append('dataset.json')
            h = hashlib.sha256()
            for fname in sorted(names):
                # Each file enters as name, NUL, byte count, NUL, bytes: the length prefix keeps the
                # stream unambiguous (no two different file sets produce the same bytes).
                h.update(fname.encode('utf-8') + b'\0' + str(self._file_size(fname)).encode('ascii') + b'\0')
                with self._open_file(fname) as f:
                    dnnlib.util.update_hash_from_file(h, f, _HASH_CHUNK)
            self._content_hash = h.hexdigest()
        return self._content_hash

# ----------------------------------------------------------------------------
