"""The study's image pools and the planning pass: every file fully decoded, every problem listed.

The planning pass looks at the whole pool (not only the images a seed would pick), so the list of
problems is the same for every seed, and nothing is written before it is clean.
"""

import collections
import dataclasses
import hashlib
import os
import re

from dataset_build.errors import BadImage, UsageError
from dataset_build.images import decode_image
from dataset_build.parallel import ordered_map, progress_bar
from dnnlib.util import image_extensions, is_image_name

CELEBA_IMAGE_DIR = 'CelebA-HQ-img'
POOL_FLAGS = {'real': '--celeba-dir', 'generated': '--generated-dir'}
_COPY_NAME = re.compile(r'( copy( \d+)?|\(\d+\))$', re.IGNORECASE)  # 'x copy.jpg', 'x - Copy.jpg', 'x (1).jpg'


@dataclasses.dataclass
class Pool:
    """One source folder: `ids` are image names relative to `root` ('/'-separated, natural order)."""
    kind: str      # 'real' or 'generated'
    root: str      # absolute path
    ids: list
    ignored: list  # files that are not images (.DS_Store, Thumbs.db, notes.txt, ...)

    @property
    def flag(self):
        return POOL_FLAGS[self.kind]


def natural_key(name):
    """'2.jpg' before '10.jpg' (CelebA-HQ names are numbers); other names in string order after them."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _walk(root, recursive):
    found = []
    for dirpath, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, '/') for f in files]
        if not recursive:
            dirs.clear()
    ext = image_extensions()
    images = [n for n in found if is_image_name(n, ext) and os.path.isfile(os.path.join(root, n))]
    return sorted(images, key=natural_key), sorted(set(found) - set(images))


def list_real_pool(celeba_dir):
    """The real pool: image files of `CelebA-HQ-img/` (or of the folder itself), in numeric order."""
    if not celeba_dir or not os.path.isdir(celeba_dir):
        raise UsageError(f'--celeba-dir: {celeba_dir} is not a folder')
    sub = os.path.join(celeba_dir, CELEBA_IMAGE_DIR)
    root = os.path.abspath(sub if os.path.isdir(sub) else celeba_dir)
    return Pool('real', root, *_walk(root, recursive=False))


def list_generated_pool(generated_dir):
    """The generated pool: image files anywhere below `generated_dir`."""
    if not generated_dir or not os.path.isdir(generated_dir):
        raise UsageError(f'--generated-dir: {generated_dir} is not a folder')
    root = os.path.abspath(generated_dir)
    return Pool('generated', root, *_walk(root, recursive=True))


# ----------------------------------------------------------------------------
# One file (runs in the pool).


def _size_problem(w, h, resolution):
    """(problem, fix, group) of a decoded image's size, all None when it fits."""
    if w != h:
        return f'not square ({w}x{h})', 'crop it to a square, or delete it', 'not square'
    if w < resolution:
        return (f'{w}x{h} is smaller than --resolution={resolution}', 'lower --resolution, or delete it',
                f'smaller than --resolution={resolution}')
    return None, None, None


def inspect_file(task):
    """Read, hash and fully decode one pool file; never raises.

    Args:
        task: (kind, root, file id, resolution).

    Returns:
        dict(kind, id, path, sha256, size, notes, problem, fix): problem/fix are None for a usable file.
    """
    kind, root, file_id, resolution = task
    path = os.path.join(root, *file_id.split('/'))
    # `group` names the problem's kind (for the grouped summary of a long list).
    out = dict(kind=kind, id=file_id, path=path, sha256=None, size=None, notes=[], problem=None, fix=None, group=None)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        out.update(problem=f'cannot read ({e.strerror or e})', fix='check its permissions, or delete it',
                   group='cannot be read')
        return out
    out['sha256'] = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode_image(data, file_id)
    except BadImage as e:
        out.update(problem=str(e), fix='re-download it, or delete it', group='cannot be decoded')
        return out
    out['size'] = decoded.image.size
    out['notes'] = decoded.notes + (['L -> RGB'] if decoded.image.mode == 'L' else [])
    out['problem'], out['fix'], out['group'] = _size_problem(*decoded.image.size, resolution)
    return out


# ----------------------------------------------------------------------------
# The whole pass.


def inspect_pools(pools, resolution, workers=None, progress=False):
    """Inspect every file of every pool in parallel, then mark byte-identical copies.

    Returns:
        list of inspect_file records, pool by pool in id order.
    """
    tasks = [(p.kind, p.root, i, resolution) for p in pools for i in p.ids]
    bar = progress_bar(len(tasks), progress, desc='Checking')
    records = []
    results = ordered_map(inspect_file, tasks, workers, chunksize=8)
    try:
        for record in results:
            records.append(record)
            bar.update(1)
    finally:
        results.close()  # on an error or Ctrl-C: terminate the workers now
        bar.close()
    mark_duplicates(records)
    return records


def _original_first(record):
    """Which of several identical files is the original: a real one, a name that does not look like
    a copy ('x copy.jpg', 'x (1).jpg'), then the first in natural order."""
    stem = os.path.splitext(os.path.basename(record['id']))[0]
    return record['kind'] != 'real', bool(_COPY_NAME.search(stem)), natural_key(record['id'])


def mark_duplicates(records):
    """Give every byte-identical copy (not its original) a problem naming the original."""
    groups = collections.defaultdict(list)
    for r in records:
        if r['problem'] is None:
            groups[r['sha256']].append(r)
    for group in groups.values():
        original, *copies = sorted(group, key=_original_first)
        for r in copies:
            where = 'the real image' if original['kind'] == 'real' else 'the generated image'
            r['problem'] = f'byte-identical copy of {where} {original["path"]}'
            r['fix'] = 'delete this copy'
            r['group'] = 'byte-identical copies'


def problem_lines(records):
    """One line per unusable file: 'path: problem -> what to do'."""
    return [f'  {r["path"]}: {r["problem"]} -> {r["fix"]}' for r in records if r['problem']]


def grouped_problem_lines(records, examples=3):
    """The unusable files by kind of problem: a count, what to do, and the first few as examples."""
    groups = collections.defaultdict(list)
    for r in records:
        if r['problem']:
            groups[r['group'] or r['problem']].append(r)
    lines = []
    for group, members in groups.items():
        lines.append(f'  {len(members)} file(s): {group} -> {members[0]["fix"]}')
        lines += [f'      e.g. {r["path"]}: {r["problem"]}' for r in members[:examples]]
    return lines


def note_lines(records, limit=None):
    noted = [r for r in records if r['notes'] and not r['problem']]
    lines = [f'  {r["path"]}: {"; ".join(r["notes"])}' for r in noted[:limit]]
    if limit is not None and len(noted) > limit:
        lines.append(f'  ... and {len(noted) - limit} more (each is listed in the manifests)')
    return lines


def resolution_hint(records, resolution):
    """When many images are too small, the --resolution they would all reach; else None."""
    small = [r for r in records if r['problem'] and 'smaller than --resolution' in r['problem']]
    unusable = sum(bool(r['problem']) for r in records)
    if not small or (len(small) < 10 and 2 * len(small) < unusable):
        return None
    sides = [r['size'][0] for r in records if r['size'] and r['size'][0] == r['size'][1]]
    fit = 1 << (min(sides).bit_length() - 1)  # the largest power of two every square image reaches
    return (f'{len(small)} images are smaller than {resolution}x{resolution}: lower --resolution '
            f'(every square image here reaches {fit}x{fit})')


def summary_lines(pools, records):
    """Per pool: files checked, unusable, converted, ignored (not images)."""
    lines = []
    for p in pools:
        mine = [r for r in records if r['kind'] == p.kind]
        shown = ', '.join(p.ignored[:5]) + (', ...' if len(p.ignored) > 5 else '')
        lines.append(f'{p.flag} {p.root}: {len(mine)} images checked, {sum(bool(r["problem"]) for r in mine)} '
                     f'unusable, {sum(bool(r["notes"]) and not r["problem"] for r in mine)} to be converted, '
                     f'{len(p.ignored)} other files ignored (not images{": " + shown if shown else ""})')
    return lines
