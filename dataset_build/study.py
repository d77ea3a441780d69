"""The study's datasets: disjoint CelebAMask-HQ subsets, and the same subsets with generated faces mixed in.

`build_study_sets` makes, from the CelebAMask-HQ images (`CelebA-HQ-img/<index>.jpg`) and a folder of
generated (Stable Diffusion) faces:

- `CelebAMask-HQ1..K.zip`: K disjoint subsets of N real images (dataset_build.selection);
- `Mix-dataset1..K.zip`: subset k with M of its images replaced by generated images; no generated
  image is used twice. A replaced image's slot (archive name) is kept, so `Mix-datasetk` and
  `CelebAMask-HQk` differ exactly in those M entries;
- `<set>.manifest.json` beside each zip: every entry's archive name, source, source sha256, PNG
  sha256, real/generated, conversion notes, the files left out, and all options;
- `generated-stats.csv`: size, mode and colour statistics of each generated image used, for review.

Order of work: (1) the planning pass decodes every file of both pools and lists every problem; it
stops there, writing nothing, unless the list is empty or `skip_bad`; (2) the sets are converted into
a temporary folder beside (or inside) `dest`, which is moved into place only when every file is
complete, so a failure or Ctrl-C leaves `dest` as it was.
"""

import contextlib
import csv
import hashlib
import io
import os
import shlex
import shutil
import tempfile
import zipfile

import numpy as np

from dataset_build import pools as pools_mod
from dataset_build.archive import add_zip_entry, archive_name, json_bytes
from dataset_build.errors import BadImage, DatasetToolError, UsageError, write_error, writing
from dataset_build.images import DEFAULT_RESIZE_FILTER, RESIZE_FILTERS, decode_image, encode_png, is_power_of_two
from dataset_build.parallel import interrupts_deferred, ordered_map, progress_bar
from dataset_build.selection import SELECTION, plan_study_sets
from dnnlib import util

REAL_PREFIX = 'CelebAMask-HQ'
MIX_PREFIX = 'Mix-dataset'
MANIFEST_FORMAT = 'sg2ada-study-manifest/2'
STATS_NAME = 'generated-stats.csv'


def set_names(num_subsets, with_mix=True):
    """Output set names, e.g. ['CelebAMask-HQ1', ..., 'Mix-dataset1', ...]."""
    names = [f'{REAL_PREFIX}{k + 1}' for k in range(num_subsets)]
    return names + ([f'{MIX_PREFIX}{k + 1}' for k in range(num_subsets)] if with_mix else [])


def manifest_path(dest, set_name):
    return os.path.join(dest, f'{set_name}.manifest.json')


def output_names(num_subsets, with_mix):
    """Every file the build writes into dest."""
    names = [n + ext for n in set_names(num_subsets, with_mix) for ext in ('.zip', '.manifest.json')]
    return names + ([STATS_NAME] if with_mix else [])


# ----------------------------------------------------------------------------
# Converting one image (runs in the pool).


_CHANNEL_NAMES = ('r', 'g', 'b')


def image_statistics(img):
    """Per-channel mean and std (0..255) of an RGB PIL image, for the review CSV."""
    arr = np.asarray(img, dtype=np.float64).reshape(-1, 3)
    return {**{f'mean_{c}': float(v) for c, v in zip(_CHANNEL_NAMES, arr.mean(0))},
            **{f'std_{c}': float(v) for c, v in zip(_CHANNEL_NAMES, arr.std(0))}}


def convert_study_image(task):
    """Decode one source, make it RGB, resize it to R x R, and encode it as PNG.

    Args:
        task: (path, sha256 seen by the planning pass, resolution, resize_filter, want_stats).

    Returns:
        dict(png, sha256 (of the PNG), stats (or None), error (or None)).
    """
    path, source_sha256, resolution, resize_filter, want_stats = task
    out = dict(png=None, sha256=None, stats=None, error=None)
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != source_sha256:
            raise BadImage('changed while the sets were being built')
        img = decode_image(data).image.convert('RGB')
    except (BadImage, OSError) as e:
        out['error'] = str(e)
        return out
    if want_stats:
        out['stats'] = dict(width=img.size[0], height=img.size[1], **image_statistics(img))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), RESIZE_FILTERS[resize_filter])
    out['png'] = encode_png(img)
    out['sha256'] = hashlib.sha256(out['png']).hexdigest()
    return out


# ----------------------------------------------------------------------------
# Checks before anything is read or written.


def _check_options(num_subsets, subset_size, num_generated, resolution, seed, resize_filter, generated_dir):
    checks = [
        (num_subsets >= 1, '--num-subsets', 'must be >= 1'),
        (subset_size >= 1, '--subset-size', 'must be >= 1'),
        (0 <= num_generated <= subset_size, '--num-generated', f'must be between 0 and --subset-size ({subset_size})'),
        (resolution >= 4 and is_power_of_two(resolution), '--resolution', 'must be a power of two >= 4'),
        (0 <= seed < 2 ** 32, '--seed', 'must be in [0, 2**32)'),
        (resize_filter in RESIZE_FILTERS, '--resize-filter', f'must be one of {", ".join(RESIZE_FILTERS)}'),
        (num_generated == 0 or generated_dir, '--generated-dir', 'is required when --num-generated > 0'),
    ]
    for ok, flag, message in checks:
        if not ok:
            raise UsageError(f'{flag}: {message}')


def _check_dest(dest, names, overwrite):
    if not dest:
        raise DatasetToolError('--dest: output path must not be empty')
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise DatasetToolError(f'--dest: {dest} is a file, not a folder')
    try:
        util.check_output_dir(dest)  # a read-only or foreign folder is refused before the long decode pass
    except OSError as e:
        raise write_error(e, '--dest', dest) from None
    existing = [n for n in names if os.path.lexists(os.path.join(dest, n))]
    if existing and not overwrite:
        raise DatasetToolError(f'--dest: {os.path.join(dest, existing[0])} already exists '
                               f'({len(existing)} output file(s) in all; pass --overwrite to replace them)')


# ----------------------------------------------------------------------------
# The planning pass.


SHOWN_PROBLEMS = 10  # a longer problem list is printed grouped by kind, in full only in a report file


def _problem_report(problems, dest):
    """Write the full problem list beside --dest (else into the temp folder); returns its path."""
    text = 'Unusable source files (file: problem -> what to do):\n' + '\n'.join(problems) + '\n'
    path = os.path.abspath(dest).rstrip(os.sep) + '.problems.txt'
    try:
        util.atomic_write_text(path, text)
    except OSError:  # a folder we cannot write: the temp folder still can
        fd, path = tempfile.mkstemp(prefix='dataset_tool-problems-', suffix='.txt')
        with os.fdopen(fd, 'w') as f:
            f.write(text)
    return path


def _log_problems(records, resolution, skip_bad, dest, log):
    """Print the unusable files (grouped when many, the full list in a report file); returns (count, hint)."""
    problems = pools_mod.problem_lines(records)
    hint = pools_mod.resolution_hint(records, resolution)
    if not problems:
        return 0, hint
    log(f'{"Left out (--skip-bad)" if skip_bad else "Unusable files"} (file: problem -> what to do):')
    shown = problems if len(problems) <= SHOWN_PROBLEMS else pools_mod.grouped_problem_lines(records)
    for line in shown + ([f'  {hint}'] if hint else []):
        log(line)
    if len(problems) > SHOWN_PROBLEMS:
        log(f'  the full list ({len(problems)} files): {_problem_report(problems, dest)}')
    return len(problems), hint


def _plan(pools, num_subsets, subset_size, num_generated, resolution, seed, skip_bad, workers, log, progress, dest):
    """Inspect both pools; stop with the problem list unless it is empty or skip_bad."""
    log(f'Checking every image of {" and ".join(p.flag for p in pools)} '
        f'({sum(len(p.ids) for p in pools)} files, fully decoded)...')
    records = pools_mod.inspect_pools(pools, resolution, workers, progress)
    for line in pools_mod.summary_lines(pools, records):
        log(line)
    problems, hint = _log_problems(records, resolution, skip_bad, dest, log)
    notes = pools_mod.note_lines(records, limit=None if problems and not skip_bad else 20)
    if notes:
        log('Converted on the way (recorded in the manifests):')
        for line in notes:
            log(line)
    if problems and not skip_bad:
        raise DatasetToolError(f'{problems} source file(s) cannot be used (listed above), no set was written; '
                               f'{hint + "; or " if hint else ""}fix or delete them, or pass --skip-bad to leave them out')
    usable = {kind: [r['id'] for r in records if r['kind'] == kind and not r['problem']] for kind in ('real', 'generated')}
    plan = plan_study_sets(usable['real'], usable['generated'], num_subsets, subset_size, num_generated, seed)
    if plan.topped_up:
        log(f'Note: the pool has little slack ({", ".join(plan.topped_up)} filled from other buckets), so deleting '
            f'a selected file may change more than its own set')
    return plan, {(r['kind'], r['id']): r for r in records}


# ----------------------------------------------------------------------------
# Writing the sets into the staging folder.


def _set_work(k, plan):
    """Slot-ordered work of subset k: (kind, slot, file id), each real image followed by its replacement."""
    replacement = dict(zip(plan.replaced[k], plan.generated[k]))
    work = []
    for slot, real_id in enumerate(plan.subsets[k]):
        work.append(('real', slot, real_id))
        if slot in replacement:
            work.append(('generated', slot, replacement[slot]))
    return work


class _SetPair:
    """CelebAMask-HQk.zip and (with mixes) Mix-datasetk.zip, written side by side in the staging folder."""

    def __init__(self, folder, k, with_mix):
        self.names = [f'{REAL_PREFIX}{k + 1}'] + ([f'{MIX_PREFIX}{k + 1}'] if with_mix else [])
        self.paths = [os.path.join(folder, n + '.zip') for n in self.names]
        self.files = [open(p, 'wb') for p in self.paths]
        self.zips = [zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) for f in self.files]
        self.entries = [[] for _ in self.names]

    def add(self, targets, entry, png):
        for t in targets:
            add_zip_entry(self.zips[t], entry['archive_name'], png)
            self.entries[t].append(entry)

    def discard(self):
        """Close the files of an unfinished pair (the staging folder is removed with them)."""
        for zf, f in zip(self.zips, self.files):
            with contextlib.suppress(Exception):  # e.g. ENOSPC again: the folder is removed anyway
                zf.close()
            f.close()

    def close(self):
        for zf, f, entries in zip(self.zips, self.files, self.entries):
            # Which images are generated (the pull metric's part labels); upstream reads only "labels".
            generated = [e['archive_name'] for e in entries if e['kind'] == 'generated']
            add_zip_entry(zf, 'dataset.json', json_bytes(dict(labels=None, generated=generated)))
            zf.close()
            f.close()


def _entry(record, slot, result):
    return dict(archive_name=archive_name(slot), kind=record['kind'], source=record['id'],
                source_path=record['path'], source_sha256=record['sha256'], sha256=result['sha256'],
                notes=record['notes'])


def _write_sets(folder, plan, records, opts, workers, progress):
    """Convert every set into `folder`; returns (set name -> manifest, generated stats rows)."""
    K, with_mix = opts['num_subsets'], opts['num_generated'] > 0
    work = [(k, *w) for k in range(K) for w in _set_work(k, plan)]
    jobs = [(records[(kind, file_id)]['path'], records[(kind, file_id)]['sha256'], opts['resolution'],
             opts['resize_filter'], kind == 'generated') for _k, kind, _slot, file_id in work]
    manifests, stats, pair = {}, [], None
    bar = progress_bar(len(jobs), progress, desc='Converting')
    # Closed in finally: on an error or Ctrl-C the workers are terminated now, not when garbage-collected.
    results = ordered_map(convert_study_image, jobs, workers)
    try:
        for result, (k, kind, slot, file_id) in zip(results, work):
            record = records[(kind, file_id)]
            if result['error'] is not None:
                raise DatasetToolError(f'{pools_mod.POOL_FLAGS[kind]}: {record["path"]}: {result["error"]}')
            if pair is None:
                pair = _SetPair(folder, k, with_mix)
            entry = _entry(record, slot, result)
            mixed_in = with_mix and (kind == 'generated' or slot not in plan.replaced[k])
            pair.add(([0] if kind == 'real' else []) + ([1] if mixed_in else []), entry, result['png'])
            if kind == 'generated':
                stats.append(dict(set=pair.names[1], archive_name=entry['archive_name'], source=file_id,
                                  source_sha256=record['sha256'], **result['stats']))
            bar.update(1)
            if len(pair.entries[0]) == opts['subset_size'] and (not with_mix or len(pair.entries[1]) == opts['subset_size']):
                pair.close()
                manifests.update(_pair_manifests(pair, opts, folder))
                pair = None
    finally:
        results.close()
        bar.close()
        if pair is not None:
            pair.discard()
    return manifests, stats


def rebuild_command(options, dest):
    """The command line that rebuilds the sets from `options` (recorded in every manifest)."""
    args = ['python', 'dataset_tool.py', 'celebamask', f'--celeba-dir={options["celeba_dir"]}']
    if options['generated_dir']:
        args.append(f'--generated-dir={options["generated_dir"]}')
    args.append(f'--dest={os.path.abspath(dest)}')
    args += [f'--{key.replace("_", "-")}={options[key]}' for key in
             ('num_subsets', 'subset_size', 'num_generated', 'resolution', 'seed', 'resize_filter')]
    if options['skip_bad']:
        args.append('--skip-bad')
    return ' '.join(shlex.quote(a) for a in args)


def _pair_manifests(pair, opts, folder):
    out = {}
    for name, path, entries in zip(pair.names, pair.paths, pair.entries):
        counts = {kind: sum(e['kind'] == kind for e in entries) for kind in ('real', 'generated')}
        out[name] = dict(format=MANIFEST_FORMAT, set=name, zip=os.path.basename(path),
                         zip_sha256=util.sha256_file(path), num_images=len(entries), counts=counts,
                         options={k: v for k, v in opts.items() if k not in ('skipped', 'dest')},
                         selection=SELECTION, skipped=opts['skipped'],
                         command=rebuild_command(opts, opts['dest']), images=entries)
        with open(manifest_path(folder, name), 'wb') as f:  # plain open: usual permissions (0644)
            f.write(json_bytes(out[name]))
    return out


def _write_stats_csv(path, rows):
    """Per-image statistics with a brightness z-score, so outliers (blank, dark, washed-out) stand out."""
    brightness = np.array([(r['mean_r'] + r['mean_g'] + r['mean_b']) / 3 for r in rows], dtype=np.float64)
    z = (brightness - brightness.mean()) / max(brightness.std(), 1e-8) if rows else brightness
    fields = ['set', 'archive_name', 'source', 'source_sha256', 'width', 'height', 'aspect',
              'mean_r', 'mean_g', 'mean_b', 'std_r', 'std_g', 'std_b', 'brightness_z']
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator='\n')
    w.writeheader()
    for row, zi in zip(rows, z):
        out = dict(row, aspect=row['width'] / row['height'], brightness_z=float(zi))
        w.writerow({k: (f'{v:.4f}' if isinstance(v, float) else v) for k, v in out.items()})
    with open(path, 'w', encoding='utf-8', newline='') as f:
        f.write(buf.getvalue())


# ----------------------------------------------------------------------------
# Staging: the study appears in dest whole, or not at all.


def _staging_folder(dest):
    """A temporary folder on dest's file system: inside dest if it exists (it may be a mount point)."""
    if os.path.isdir(dest):
        return tempfile.mkdtemp(prefix='.celebamask-', suffix='.tmp', dir=dest)
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(dest))}.', suffix='.tmp', dir=parent)


def _publish(staging, dest):
    """Move the finished files into dest; Ctrl-C waits until the last rename is done."""
    with interrupts_deferred():
        if not os.path.isdir(dest):
            os.chmod(staging, 0o777 & ~util.current_umask())  # mkdtemp made it 0700
            os.replace(staging, dest)
            return
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(dest, name))
        os.rmdir(staging)


def build_study_sets(celeba_dir, generated_dir, dest, num_subsets=5, subset_size=1000, num_generated=200,
                     resolution=512, seed=0, resize_filter=DEFAULT_RESIZE_FILTER, overwrite=False, skip_bad=False,
                     workers=None, log=print, progress=False):
    """Build the real subsets, the mixes, their manifests and the generated-image statistics.

    Args:
        celeba_dir: CelebAMask-HQ root or its CelebA-HQ-img folder.
        generated_dir: Folder of generated faces (may be None when num_generated == 0: no mixes).
        dest: Output folder (created).
        num_subsets, subset_size, num_generated: K, N, M.
        resolution: Output side R (power of two); sources must be square and at least R.
        seed: Selection seed.
        resize_filter: 'lanczos' (upstream's default), 'box' or 'bicubic'.
        overwrite: Replace existing outputs of the same names.
        skip_bad: Leave unusable files out (listed in the manifests) instead of stopping.
        workers: Process count (None/0 = all cores).
        log: Called with each report line.
        progress: Show progress bars.

    Returns:
        dict: set name -> manifest dict.
    """
    _check_options(num_subsets, subset_size, num_generated, resolution, seed, resize_filter, generated_dir)
    with_mix = num_generated > 0
    _check_dest(dest, output_names(num_subsets, with_mix), overwrite)
    pools = [pools_mod.list_real_pool(celeba_dir)] + ([pools_mod.list_generated_pool(generated_dir)] if with_mix else [])
    plan, records = _plan(pools, num_subsets, subset_size, num_generated, resolution, seed, skip_bad, workers, log,
                          progress, dest)
    by_kind = {p.kind: p for p in pools}
    opts = dict(celeba_dir=by_kind['real'].root, generated_dir=by_kind['generated'].root if with_mix else None,
                num_subsets=num_subsets, subset_size=subset_size, num_generated=num_generated, resolution=resolution,
                seed=seed, resize_filter=resize_filter, skip_bad=skip_bad, dest=dest,
                skipped=[dict(kind=r['kind'], source=r['id'], problem=r['problem'])
                         for r in records.values() if r['problem']])
    staging = None
    with writing(dest):
        try:
            with interrupts_deferred():  # a Ctrl-C between creating and recording it would leak the folder
                staging = _staging_folder(dest)
            manifests, stats = _write_sets(staging, plan, records, opts, workers, progress)
            if with_mix:
                _write_stats_csv(os.path.join(staging, STATS_NAME), stats)
            _publish(staging, dest)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful publish
    for name in set_names(num_subsets, with_mix):
        m = manifests[name]
        log(f'{name}.zip: {m["num_images"]} images ({m["counts"]["real"]} real, {m["counts"]["generated"]} '
            f'generated) at {resolution}x{resolution}')
    if with_mix:
        log(f'Per-image statistics of the generated images: {os.path.join(dest, STATS_NAME)}')
    return manifests
