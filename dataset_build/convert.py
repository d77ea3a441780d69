"""Upstream's conversion: an image folder, image zip, CIFAR-10 or MNIST into a training dataset.

The output is the layout training reads: PNGs named `00000/img00000000.png` (5-digit folder = first
five digits of the 8-digit input index), uncompressed, plus `dataset.json` with labels or null.
Differences from upstream:

- An odd image never aborts the run. CMYK/YCbCr/palette/1-bit/16-bit images are converted, RGBA/LA
  are composited onto black, and undecodable or mismatched images are skipped. Both lists, and the
  files ignored as non-images, go into `conversion-report.json` inside the output and are printed.
- The output is written to a temporary name and renamed when complete; an existing destination is
  kept unless `overwrite=True`. Ctrl-C stops the workers and removes the temporary output.
- Decoding, resizing and PNG encoding run in a process pool; results are consumed in input order and
  the archive has fixed timestamps, so the output is byte-identical whatever the worker count.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import PIL.Image

from dataset_build.archive import ArchiveWriter, archive_name, check_destination, json_bytes
from dataset_build.errors import BadImage, DatasetToolError, UsageError, writing
from dataset_build.images import (DEFAULT_RESIZE_FILTER, RESIZE_FILTERS, decode_image, encode_png,
                                  is_power_of_two)
from dataset_build.parallel import ordered_map, progress_bar, worker_state
from dnnlib.util import is_image_name

TRANSFORMS = ('center-crop', 'center-crop-wide')
REPORT_NAME = 'conversion-report.json'


# ----------------------------------------------------------------------------
# Transforms (as upstream: center-crop takes the central square, center-crop-wide letterboxes).


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    """What to do with each decoded image; `target` (mode, (w, h)) is fixed by the first kept image."""
    transform: str = None
    width: int = None
    height: int = None
    resize_filter: str = DEFAULT_RESIZE_FILTER
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
# Sources: folder, zip, CIFAR-10, MNIST.


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
    names, ignored = [], []
    for dirpath, _dirs, files in os.walk(root):
        for fname in files:
            rel = os.path.relpath(os.path.join(dirpath, fname), root).replace(os.sep, '/')
            if rel == 'dataset.json':
                continue
            (names if is_image_name(rel) and os.path.isfile(os.path.join(root, rel)) else ignored).append(rel)
    labels = {}
    meta = os.path.join(root, 'dataset.json')
    if os.path.isfile(meta):
        with open(meta, encoding='utf-8') as f:
            labels = _labels_from_json(f.read(), meta)
    items = [SourceItem(name=n, path=os.path.join(root, n), label=labels.get(n)) for n in sorted(names)]
    return items, sorted(ignored)


def _list_zip(path):
    try:
        with zipfile.ZipFile(path) as zf:
            files = [n for n in zf.namelist() if not n.endswith('/') and n != 'dataset.json']
            labels = _labels_from_json(zf.read('dataset.json'), f'{path}:dataset.json') \
                if 'dataset.json' in zf.namelist() else {}
    except zipfile.BadZipFile as e:
        raise DatasetToolError(f'--source: {path} is not a valid zip file ({e})') from None
    names = sorted(n for n in files if is_image_name(n))
    items = [SourceItem(name=n, path=path, member=n, label=labels.get(n.replace('\\', '/'))) for n in names]
    return items, sorted(set(files) - set(names))


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
            for i, (img, lab) in enumerate(zip(images, labels))], []


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
            for i, (img, lab) in enumerate(zip(images, labels))], []


def list_source(source):
    """Enumerate the input images of `--source`, sorted by relative name.

    Args:
        source: Folder, .zip, `cifar-10-python.tar.gz` or `train-images-idx3-ubyte.gz`.

    Returns:
        (list of SourceItem, sorted names of the files ignored because they are not images).
    """
    if not source:
        raise UsageError('--source: must not be empty')
    if not os.path.exists(source):
        raise UsageError(f'--source: {source} does not exist')
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


def convert_item(item, spec=None):
    """Decode, normalise, transform and encode one input image.

    Args:
        item: SourceItem.
        spec: TransformSpec (defaults to the one the pool was started with).

    Returns:
        dict(name, png (bytes or None), mode, size, notes [str], reason (why skipped, or None),
        source_sha256).
    """
    spec = spec or worker_state('spec')
    out = dict(name=item.name, png=None, mode=None, size=None, notes=[], reason=None, source_sha256=None)
    try:
        if item.array is not None:
            img = PIL.Image.fromarray(item.array)
            out['source_sha256'] = hashlib.sha256(item.array.tobytes()).hexdigest()
        else:
            data = read_item_bytes(item)
            out['source_sha256'] = hashlib.sha256(data).hexdigest()
            decoded = decode_image(data, item.name)
            img = decoded.image
            out['notes'] += decoded.notes
        img = apply_transform(img, spec)
        if spec.target is not None:
            img, note = _match_target(img, spec.target)
            if note:
                out['notes'].append(note)
        out.update(png=encode_png(img), mode=img.mode, size=img.size)
    except BadImage as e:
        out['reason'] = str(e)
    except OSError as e:  # unreadable file: skip it like a bad image, the report names it
        out['reason'] = f'cannot read: {e.strerror or e}'
    return out


# ----------------------------------------------------------------------------
# The conversion.


def _check_options(transform, width, height, resize_filter, max_images):
    if resize_filter not in RESIZE_FILTERS:
        raise UsageError(f'--resize-filter: must be one of {", ".join(RESIZE_FILTERS)}')
    if transform is not None and transform not in TRANSFORMS:
        raise UsageError(f'--transform: must be one of {", ".join(TRANSFORMS)}')
    if transform is not None and (width is None or height is None):
        raise UsageError(f'--transform={transform} needs both --width and --height')
    for flag, value in (('--width', width), ('--height', height)):
        if value is not None and value < 1:
            raise UsageError(f'{flag}: must be >= 1')
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
             f'{len(report["converted"])} converted, {len(report["skipped"])} skipped, '
             f'{len(report["ignored"])} other files ignored (not images)']
    for key, field in (('converted', 'note'), ('skipped', 'reason')):
        entries = report[key]
        if entries:
            lines.append(f'{key}:')
            lines += [f'  {e["name"]}: {e[field]}' for e in entries[:limit]]
            if len(entries) > limit:
                lines.append(f'  ... and {len(entries) - limit} more (see {REPORT_NAME} in the output)')
    if report['ignored']:
        shown = ', '.join(report['ignored'][:5]) + (', ...' if len(report['ignored']) > 5 else '')
        lines.append(f'ignored: {shown}')
    return lines


class _Conversion:
    """One conversion's report and labels, filled in input order as results arrive."""

    def __init__(self, items, ignored, source, options):
        self.items = items
        self.labels = []
        self.report = dict(source=source, options=options, num_input=len(items), num_written=0,
                           converted=[], skipped=[], ignored=ignored, images=[])

    def record(self, writer, idx, result):
        item, report = self.items[idx], self.report
        if result['reason'] is not None:
            report['skipped'].append(dict(name=item.name, reason=result['reason']))
            return
        name = archive_name(idx)
        writer.add(name, result['png'])
        report['num_written'] += 1
        report['images'].append([name, item.name, result['source_sha256']])
        self.labels.append([name, item.label])
        report['converted'] += [dict(name=item.name, archive_name=name, note=n) for n in result['notes']]


def _probe_first(conv, writer, spec, bar):
    """Convert in-process until one image survives: it fixes the mode and size the pool enforces."""
    idx = 0
    while idx < len(conv.items) and spec.target is None:
        result = convert_item(conv.items[idx], spec)
        if result['reason'] is None:
            _check_first_image(result)
            spec = dataclasses.replace(spec, target=(result['mode'], tuple(result['size'])))
        conv.record(writer, idx, result)
        idx += 1
        bar.update(1)
    return idx, spec


def _write_all(conv, writer, spec, workers, bar):
    idx, spec = _probe_first(conv, writer, spec, bar)
    # closing(): on an error or Ctrl-C the generator terminates the workers now.
    with contextlib.closing(ordered_map(convert_item, conv.items[idx:], workers, state=dict(spec=spec))) as results:
        for offset, result in enumerate(results):
            conv.record(writer, idx + offset, result)
            bar.update(1)
    report = conv.report
    if report['num_written'] == 0:
        first = report['skipped'][0]
        raise DatasetToolError(f'--source: none of the {len(conv.items)} images could be used '
                               f'(first problem: {first["name"]}: {first["reason"]})')
    has_all_labels = all(label is not None for _name, label in conv.labels)
    writer.add('dataset.json', json_bytes(dict(labels=conv.labels if has_all_labels else None)))
    report['resolution'], report['mode'] = spec.target[1][0], spec.target[0]
    writer.add(REPORT_NAME, json_bytes(report))  # no output path inside: a copy stays byte-identical


def convert_dataset(source, dest, max_images=None, transform=None, width=None, height=None,
                    resize_filter=DEFAULT_RESIZE_FILTER, overwrite=False, workers=None, log=print, progress=False):
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
    items, ignored = list_source(source)
    if max_images is not None:
        items = items[:max_images]
    if not items:
        raise DatasetToolError(f'--source: {source} contains no images')
    spec = TransformSpec(transform=transform, width=width, height=height, resize_filter=resize_filter)
    conv = _Conversion(items, ignored, source, dict(max_images=max_images, transform=transform, width=width,
                                                    height=height, resize_filter=resize_filter))
    bar = progress_bar(len(items), progress, desc='Converting')
    try:
        with writing(dest), ArchiveWriter(dest, overwrite) as writer:
            _write_all(conv, writer, spec, workers, bar)
    finally:
        bar.close()
    for line in _summary_lines(conv.report, dest):
        log(line)
    return conv.report
