"""Dataset conversion (the library behind `dataset_tool.py`).

Turns an image folder, an image zip, CIFAR-10 or MNIST into the layout training reads
(upstream-facts 10.1/10.2): PNGs named `00000/img00000000.png` (5-digit folder = first five digits of
the 8-digit input index), uncompressed, plus `dataset.json` with labels or null. Differences from
upstream that fix user-pain D.20:

- An odd image never aborts the run. CMYK/YCbCr/palette/1-bit/16-bit images are converted, RGBA/LA
  are composited onto black, and undecodable or mismatched images are skipped. Both lists go into
  `conversion-report.json` inside the output and are printed at the end.
- The output is written to a temporary name and renamed when complete; an existing destination is
  kept unless `overwrite=True`.
- Decoding, resizing and PNG encoding run in a process pool; results are consumed in input order and
  the archive has fixed timestamps, so the output is byte-identical whatever the worker count.

The study sets (CelebAMask-HQ subsets and mixes) live in `training.dataset_study` and reuse the image
normalisation and archive writer defined here.
"""

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
import PIL.Image

from dnnlib import util

RESIZE_FILTERS = {
    'box': PIL.Image.Resampling.BOX,
    'lanczos': PIL.Image.Resampling.LANCZOS,
    'bicubic': PIL.Image.Resampling.BICUBIC,
}
TRANSFORMS = ('center-crop', 'center-crop-wide')
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest date zip can store: fixed so archives are reproducible
REPORT_NAME = 'conversion-report.json'


class DatasetToolError(Exception):
    """A user-input problem; the message is one line naming the flag or file."""


class BadImage(Exception):
    """One input image cannot be used; the message is the reason recorded in the report."""


def is_power_of_two(n):
    return n >= 1 and (n & (n - 1)) == 0


@functools.lru_cache(maxsize=None)
def image_extensions():
    """Lower-case file extensions PIL can decode ('.png', '.jpg', ...)."""
    PIL.Image.init()
    return frozenset(ext.lower() for ext in PIL.Image.EXTENSION)


def is_image_name(name, extensions=None):
    """True for names with an image extension; macOS resource forks ('._x', '__MACOSX/') excluded.

    Finder-made zips carry AppleDouble files with image extensions that are not images (upstream
    would crash on them).
    """
    extensions = image_extensions() if extensions is None else extensions
    name = name.replace('\\', '/')
    base = name.rsplit('/', 1)[-1]
    if base.startswith('._') or name.startswith('__MACOSX/'):
        return False
    return os.path.splitext(base)[1].lower() in extensions


def archive_name(idx):
    """Upstream's name for input image `idx`: '00000/img00000000.png'."""
    digits = f'{idx:08d}'
    return f'{digits[:5]}/img{digits}.png'


# ----------------------------------------------------------------------------
# Decoding and mode normalisation: every image leaves as PIL 'RGB' or 'L'.


def _composite_on_black(img):
    """Drop the alpha channel by compositing onto black (premultiply): transparent pixels become black."""
    base_mode = 'L' if img.mode in ('LA', 'La') else 'RGB'
    rgba = img.convert('LA' if base_mode == 'L' else 'RGBA')
    out = PIL.Image.new(base_mode, rgba.size, 0)
    out.paste(rgba.convert(base_mode), mask=rgba.getchannel('A'))
    return out


def _sixteen_bit_to_l(img):
    """16-bit grayscale -> 8-bit by rescaling 0..65535 onto 0..255 (PIL's own convert clips instead)."""
    arr = np.asarray(img).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise BadImage(f'{img.mode} image with values outside 0..65535')
    return PIL.Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), 'L')


def normalize_mode(img):
    """Bring a decoded PIL image to 'RGB' or 'L'.

    Args:
        img: A loaded PIL image of any mode.

    Returns:
        (image, note): note is None when nothing changed, else a short description of the conversion.

    Raises:
        BadImage: for modes with no meaningful 8-bit RGB/L reading (e.g. 32-bit float).
    """
    mode = img.mode
    if mode in ('RGB', 'L'):
        return img, None
    if mode == '1':
        return img.convert('L'), '1-bit -> L'
    if mode in ('P', 'PA'):
        has_alpha = mode == 'PA' or 'transparency' in img.info
        if has_alpha:
            return _composite_on_black(img.convert('RGBA')), 'palette with transparency -> RGB (on black)'
        return img.convert('RGB'), 'palette -> RGB'
    if mode in ('RGBA', 'RGBa', 'LA', 'La', 'RGBX'):
        if mode == 'RGBX':
            return img.convert('RGB'), 'RGBX -> RGB'
        out = _composite_on_black(img)
        return out, f'{mode} -> {out.mode} (alpha composited on black)'
    if mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        return img.convert('RGB'), f'{mode} -> RGB'
    if mode.startswith('I;16') or mode == 'I':
        return _sixteen_bit_to_l(img), f'{mode} (16-bit) -> L (8-bit)'
    raise BadImage(f'unsupported image mode {mode}')


def decode_image(data):
    """Decode image bytes fully (truncation is detected here, not later).

    Args:
        data: The file's bytes.

    Returns:
        (PIL image in 'RGB' or 'L', note or None).

    Raises:
        BadImage: undecodable, truncated or unsupported.
    """
    try:
        img = PIL.Image.open(io.BytesIO(data))
        img.load()
    except PIL.UnidentifiedImageError:
        raise BadImage('not a recognised image file') from None  # PIL's message embeds an object address
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/DecompressionBombError for bad files
        raise BadImage(f'cannot decode: {type(e).__name__}: {e}') from None
    return normalize_mode(img)


def encode_png(img):
    """Uncompressed PNG bytes, as upstream writes them (fast to decode; deterministic)."""
    buf = io.BytesIO()
    img.save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------
# Transforms (upstream-facts 10.2).


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    """What to do with each decoded image; `target` (mode, (w, h)) is fixed by the first kept image."""
    transform: str = None
    width: int = None
    height: int = None
    resize_filter: str = 'lanczos'
    target: tuple = None


def apply_transform(img, spec):
    """Crop/resize one image as `spec` says.

    Args:
        img: PIL image ('RGB' or 'L').
        spec: TransformSpec.

    Returns:
        The transformed PIL image.

    Raises:
        BadImage: the image is too small for center-crop-wide.
    """
    resample = RESIZE_FILTERS[spec.resize_filter]
    w, h = img.size
    if spec.transform is None:
        size = (spec.width or w, spec.height or h)
        return img if size == (w, h) else img.resize(size, resample)
    if spec.transform == 'center-crop':
        crop = min(w, h)
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
        return img.resize((spec.width, spec.height), resample)
    if spec.transform == 'center-crop-wide':
        # Keep a full-width band with the output's aspect ratio, then letterbox it into a square.
        ch = int(np.round(spec.width * h / w))
        if w < spec.width or ch < spec.height:
            raise BadImage(f'{w}x{h} is too small for center-crop-wide to {spec.width}x{spec.height}')
        top = (h - ch) // 2
        band = img.crop((0, top, w, top + ch)).resize((spec.width, spec.height), resample)
        canvas = PIL.Image.new(img.mode, (spec.width, spec.width), 0)
        canvas.paste(band, (0, (spec.width - spec.height) // 2))
        return canvas
    raise ValueError(f'unknown transform {spec.transform!r}')


def _match_target(img, target):
    """Make a transformed image agree with the dataset's mode and size, or reject it."""
    mode, size = target
    note = None
    if img.mode != mode:
        note = f'{img.mode} -> {mode} (to match the dataset)'
        img = img.convert(mode)
    if img.size != tuple(size):
        raise BadImage(f'{img.size[0]}x{img.size[1]} differs from the dataset size {size[0]}x{size[1]} '
                       f'(use --width/--height or --transform to resize every image)')
    return img, note


# ----------------------------------------------------------------------------
# Sources (upstream-facts 10.2): folder, zip, CIFAR-10, MNIST.


@dataclasses.dataclass
class SourceItem:
    """One input image: a file, a zip member, or an in-memory array (CIFAR/MNIST)."""
    name: str                    # relative name, used for labels and the report
    path: str = None             # file path, or the zip's path when `member` is set
    member: str = None           # zip member name
    array: np.ndarray = None     # HWC or HW uint8, for archive formats decoded up front
    label: object = None


_worker_zips = {}  # zip path -> ZipFile, opened once per process


def read_item_bytes(item):
    """The raw bytes of a file or zip-member item."""
    if item.member is None:
        with open(item.path, 'rb') as f:
            return f.read()
    zf = _worker_zips.get(item.path)
    if zf is None:
        zf = _worker_zips[item.path] = zipfile.ZipFile(item.path)
    return zf.read(item.member)


def _labels_from_json(text, where):
    try:
        labels = json.loads(text).get('labels')
    except (ValueError, AttributeError) as e:
        raise DatasetToolError(f'{where}: not a valid dataset.json ({e})') from None
    if labels is None:
        return {}
    return {str(name).replace('\\', '/'): value for name, value in labels}


def _list_folder(root):
    names = []
    for dirpath, _dirs, files in os.walk(root):
        for fname in files:
            rel = os.path.relpath(os.path.join(dirpath, fname), root).replace(os.sep, '/')
            if is_image_name(rel):
                names.append(rel)
    labels = {}
    meta = os.path.join(root, 'dataset.json')
    if os.path.isfile(meta):
        with open(meta, encoding='utf-8') as f:
            labels = _labels_from_json(f.read(), meta)
    return [SourceItem(name=n, path=os.path.join(root, n), label=labels.get(n)) for n in sorted(names)]


def _list_zip(path):
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if is_image_name(n) and not n.endswith('/'))
            labels = _labels_from_json(zf.read('dataset.json'), f'{path}:dataset.json') \
                if 'dataset.json' in zf.namelist() else {}
    except zipfile.BadZipFile as e:
        raise DatasetToolError(f'--source: {path} is not a valid zip file ({e})') from None
    return [SourceItem(name=n, path=path, member=n, label=labels.get(n.replace('\\', '/'))) for n in names]


def _list_cifar10(path):
    # The official archive holds Python pickles: only use archives you downloaded from the CIFAR site.
    images, labels = [], []
    with tarfile.open(path, 'r:gz') as tar:
        for batch in range(1, 6):
            member = tar.extractfile(f'cifar-10-batches-py/data_batch_{batch}')
            data = pickle.load(member, encoding='latin1')
            images.append(np.asarray(data['data'], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(data['labels'], dtype=np.int64))
    images = np.concatenate(images).transpose(0, 2, 3, 1)  # NCHW => NHWC
    labels = np.concatenate(labels)
    return [SourceItem(name=f'cifar{i:05d}', array=img, label=int(lab))
            for i, (img, lab) in enumerate(zip(images, labels))]


def _list_mnist(path):
    labels_path = os.path.join(os.path.dirname(path), 'train-labels-idx1-ubyte.gz')
    if not os.path.isfile(labels_path):
        raise DatasetToolError(f'--source: MNIST labels {labels_path} not found next to the images')
    with gzip.open(path, 'rb') as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_path, 'rb') as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    images = np.pad(images, [(0, 0), (2, 2), (2, 2)])  # 28x28 -> 32x32, zero border (upstream)
    return [SourceItem(name=f'mnist{i:05d}', array=img, label=int(lab))
            for i, (img, lab) in enumerate(zip(images, labels))]


def list_source(source):
    """Enumerate the input images of `--source`, sorted by relative name.

    Args:
        source: Folder, .zip, `cifar-10-python.tar.gz` or `train-images-idx3-ubyte.gz`.

    Returns:
        list of SourceItem.
    """
    if not source:
        raise DatasetToolError('--source: must not be empty')
    if not os.path.exists(source):
        raise DatasetToolError(f'--source: {source} does not exist')
    if os.path.isdir(source):
        if source.rstrip('/\\').endswith('_lmdb'):
            raise DatasetToolError(f'--source: {source}: LSUN LMDB input is not supported; export it to images first')
        return _list_folder(source)
    base = os.path.basename(source)
    if base == 'cifar-10-python.tar.gz':
        return _list_cifar10(source)
    if base == 'train-images-idx3-ubyte.gz':
        return _list_mnist(source)
    if source.lower().endswith('.zip'):
        return _list_zip(source)
    raise DatasetToolError(f'--source: {source}: expected a folder, a .zip, cifar-10-python.tar.gz '
                           f'or train-images-idx3-ubyte.gz')


# ----------------------------------------------------------------------------
# Per-image work (runs in the pool).


_worker_spec = None  # TransformSpec of the current job, set by the pool initializer


def _init_worker(spec):
    global _worker_spec
    _worker_spec = spec


def convert_item(item, spec=None):
    """Decode, normalise, transform and encode one input image.

    Args:
        item: SourceItem.
        spec: TransformSpec (defaults to the one the pool was initialised with).

    Returns:
        dict(name, png (bytes or None), mode, size, notes [str], reason (why skipped, or None),
        source_sha256).
    """
    spec = spec or _worker_spec
    out = dict(name=item.name, png=None, mode=None, size=None, notes=[], reason=None, source_sha256=None)
    try:
        if item.array is not None:
            img = PIL.Image.fromarray(item.array)
            out['source_sha256'] = hashlib.sha256(item.array.tobytes()).hexdigest()
        else:
            data = read_item_bytes(item)
            out['source_sha256'] = hashlib.sha256(data).hexdigest()
            img, note = decode_image(data)
            if note:
                out['notes'].append(note)
        img = apply_transform(img, spec)
        if spec.target is not None:
            img, note = _match_target(img, spec.target)
            if note:
                out['notes'].append(note)
        out.update(png=encode_png(img), mode=img.mode, size=img.size)
    except BadImage as e:
        out['reason'] = str(e)
    except OSError as e:  # unreadable file: skip it like a bad image, the report names it
        out['reason'] = f'cannot read: {e}'
    return out


def _pool_context():
    # On Linux fork starts workers in milliseconds with nothing to re-import (the parent holds no
    # threads here). Elsewhere spawn: fork is unsafe on macOS and absent on Windows.
    return multiprocessing.get_context('fork' if sys.platform.startswith('linux') else 'spawn')


def ordered_map(func, items, workers, initargs=(), chunksize=4):
    """Yield func(item) for every item, in input order, using `workers` processes (1 = in-process).

    Args:
        func: Picklable top-level function.
        items: Sequence of picklable arguments.
        workers: Process count; 0 or None means all cores.
        initargs: Passed to `_init_worker` in each worker (and applied in-process when workers == 1).
        chunksize: Items handed to a worker at a time.
    """
    workers = workers or os.cpu_count() or 1
    workers = min(workers, max(len(items), 1))
    if workers <= 1:
        if initargs:
            _init_worker(*initargs)
        for item in items:
            yield func(item)
        return
    with _pool_context().Pool(workers, initializer=_init_worker if initargs else None,
                              initargs=initargs) as pool:
        yield from pool.imap(func, items, chunksize=chunksize)


# ----------------------------------------------------------------------------
# Output archive: a zip or a folder, written under a temporary name and renamed at the end.


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_destination(dest, overwrite, flag='--dest'):
    """Refuse an existing destination unless `overwrite`; an existing *empty* folder is allowed (upstream)."""
    if not dest:
        raise DatasetToolError(f'{flag}: output path must not be empty')
    if not os.path.exists(dest) or overwrite:
        return
    if os.path.isdir(dest) and not dest.lower().endswith('.zip') and not os.listdir(dest):
        return
    raise DatasetToolError(f'{flag}: {dest} already exists (pass --overwrite to replace it)')


class ArchiveWriter:
    """Collects (name, bytes) entries into `dest` (.zip or folder); nothing appears at `dest` until commit.

    Zip entries are stored uncompressed with a fixed timestamp and permissions, in the order added, so
    equal inputs give byte-identical archives.
    """

    def __init__(self, dest, overwrite=False, flag='--dest'):
        check_destination(dest, overwrite, flag)
        self.dest = dest
        self.is_zip = dest.lower().endswith('.zip')
        self._stack = contextlib.ExitStack()
        self._names = set()
        if self.is_zip:
            f = self._stack.enter_context(util.atomic_open(dest, 'wb'))
            self._zip = self._stack.enter_context(zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED))
        else:
            parent = os.path.dirname(os.path.abspath(dest))
            os.makedirs(parent, exist_ok=True)
            self._tmpdir = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(dest)) + '.', dir=parent)

    def add(self, name, data):
        """Add one entry (a '/'-separated relative name)."""
        if name in self._names:
            raise ValueError(f'duplicate archive entry {name}')
        self._names.add(name)
        if self.is_zip:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, whatever the host, so the bytes do not depend on the OS
            info.external_attr = 0o644 << 16
            self._zip.writestr(info, data)
        else:
            path = os.path.join(self._tmpdir, *name.split('/'))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)

    def commit(self):
        """Finish the archive and move it to `dest` (replacing what was there)."""
        mode = 0o666 & ~_current_umask()
        if self.is_zip:
            self._stack.close()  # closes the zip, then atomic_open renames the temp file onto dest
            os.chmod(self.dest, mode)
            return
        os.chmod(self._tmpdir, mode | 0o111 & ~_current_umask())
        old = None
        if os.path.exists(self.dest):
            old = tempfile.mkdtemp(prefix='.old.', dir=os.path.dirname(os.path.abspath(self.dest)))
            os.replace(self.dest, os.path.join(old, 'x'))
        os.replace(self._tmpdir, self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self):
        """Discard everything written so far."""
        if self.is_zip:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError('aborted'), None)  # atomic_open removes its temp
        else:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def json_bytes(obj):
    """Deterministic, human-readable JSON bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode('utf-8')


# ----------------------------------------------------------------------------
# The upstream-compatible conversion.


def _check_options(transform, width, height, resize_filter, max_images):
    if resize_filter not in RESIZE_FILTERS:
        raise DatasetToolError(f'--resize-filter: must be one of {", ".join(RESIZE_FILTERS)}')
    if transform is not None and transform not in TRANSFORMS:
        raise DatasetToolError(f'--transform: must be one of {", ".join(TRANSFORMS)}')
    if transform is not None and (width is None or height is None):
        raise DatasetToolError(f'--transform={transform} needs both --width and --height')
    for flag, value in (('--width', width), ('--height', height)):
        if value is not None and value < 1:
            raise DatasetToolError(f'{flag}: must be >= 1')
    if max_images is not None and max_images < 0:
        raise DatasetToolError('--max-images: must be >= 0')


def _check_first_image(result):
    """The first kept image fixes the dataset shape: it must be square, power-of-two, RGB or L."""
    w, h = result['size']
    hint = ' (resize with e.g. --transform=center-crop --width=512 --height=512)'
    if w != h:
        raise DatasetToolError(f'--source: output images must be square, but {result["name"]} gives {w}x{h}{hint}')
    if not is_power_of_two(w):
        raise DatasetToolError(f'--source: output resolution must be a power of two, but {result["name"]} '
                               f'gives {w}x{h}{hint}')


def _summary_lines(report, dest, limit=20):
    lines = [f'{report["num_written"]} of {report["num_input"]} images written to {dest}; '
             f'{len(report["converted"])} converted, {len(report["skipped"])} skipped']
    for key, field in (('converted', 'note'), ('skipped', 'reason')):
        entries = report[key]
        if entries:
            lines.append(f'{key}:')
            lines += [f'  {e["name"]}: {e[field]}' for e in entries[:limit]]
            if len(entries) > limit:
                lines.append(f'  ... and {len(entries) - limit} more (see {REPORT_NAME} in the output)')
    return lines


def convert_dataset(source, dest, max_images=None, transform=None, width=None, height=None,
                    resize_filter='lanczos', overwrite=False, workers=None, log=print, progress=False):
    """Convert `source` into a training dataset at `dest` (upstream `dataset_tool.py` semantics).

    Args:
        source: Input folder, zip, CIFAR-10 or MNIST archive.
        dest: Output `.zip` or folder.
        max_images: Read at most this many input images (dropped ones count, as upstream).
        transform: None, 'center-crop' or 'center-crop-wide'.
        width, height: Output size (both required by the transforms).
        resize_filter: 'box', 'lanczos' or 'bicubic'.
        overwrite: Replace an existing destination.
        workers: Process count; None/0 = all cores, 1 = in-process.
        log: Called with each summary line.
        progress: Show a tqdm progress bar.

    Returns:
        The report dict (also written as conversion-report.json inside the output).
    """
    _check_options(transform, width, height, resize_filter, max_images)
    check_destination(dest, overwrite)
    items = list_source(source)
    if max_images is not None:
        items = items[:max_images]
    if not items:
        raise DatasetToolError(f'--source: {source} contains no images')

    spec = TransformSpec(transform=transform, width=width, height=height, resize_filter=resize_filter)
    report = dict(source=source, options=dict(max_images=max_images, transform=transform, width=width,
                  height=height, resize_filter=resize_filter), num_input=len(items), num_written=0,
                  converted=[], skipped=[], images=[])
    labels = []

    def record(idx, result):
        item = items[idx]
        if result['reason'] is not None:
            report['skipped'].append(dict(name=item.name, reason=result['reason']))
            return
        name = archive_name(idx)
        writer.add(name, result['png'])
        report['num_written'] += 1
        report['images'].append([name, item.name, result['source_sha256']])
        labels.append([name, item.label])
        for note in result['notes']:
            report['converted'].append(dict(name=item.name, archive_name=name, note=note))

    with ArchiveWriter(dest, overwrite) as writer:
        bar = progress_bar(len(items), progress)
        # Probe in-process until one image survives: it fixes the mode and size the pool enforces.
        idx = 0
        while idx < len(items) and spec.target is None:
            result = convert_item(items[idx], spec)
            if result['reason'] is None:
                _check_first_image(result)
                spec = dataclasses.replace(spec, target=(result['mode'], tuple(result['size'])))
            record(idx, result)
            idx += 1
            bar.update(1)
        # closing(): on an error the generator exits its `with Pool`, terminating the workers now.
        with contextlib.closing(ordered_map(convert_item, items[idx:], workers, initargs=(spec,))) as results:
            for offset, result in enumerate(results):
                record(idx + offset, result)
                bar.update(1)
        bar.close()
        if report['num_written'] == 0:
            raise DatasetToolError(f'--source: none of the {len(items)} images could be used '
                                   f'(first problem: {items[0].name}: {report["skipped"][0]["reason"]})')
        has_all_labels = all(label is not None for _name, label in labels)
        writer.add('dataset.json', json_bytes(dict(labels=labels if has_all_labels else None)))
        report['resolution'] = spec.target[1][0]
        report['mode'] = spec.target[0]
        writer.add(REPORT_NAME, json_bytes(report))  # no output path inside: a copy stays byte-identical
    for line in _summary_lines(report, dest):
        log(line)
    return report


def progress_bar(total, enabled):
    """A tqdm bar when `enabled` (and tqdm is installed), else an object with no-op update/close."""
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(total=total, unit='img')
        except ImportError:
            pass

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass
    return _Null()

# ----------------------------------------------------------------------------
