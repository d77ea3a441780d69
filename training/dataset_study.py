"""The study's datasets: disjoint CelebAMask-HQ subsets, and the same subsets with generated faces mixed in.

`build_study_sets` makes, from the CelebAMask-HQ images (`CelebA-HQ-img/<index>.jpg`) and a folder of
generated (Stable Diffusion) faces:

- `CelebAMask-HQ1..K.zip`: K disjoint subsets of N real images chosen by the seed;
- `Mix-dataset1..K.zip`: subset k with M of its images (chosen by the seed) replaced by generated
  images; no generated image is used twice. A replaced image's slot (archive name) is kept, so
  `Mix-datasetk` and `CelebAMask-HQk` differ exactly in those M entries;
- `<set>.manifest.json` beside each zip: every entry's archive name, source, source sha256, PNG
  sha256, real/generated, and all options, so the set can be verified (`verify_manifest`) and rebuilt;
- `generated-stats.csv`: size, mode and colour statistics of each generated image used, for review.

Three independent random streams derive from the seed (RandomState([seed, stream])): real subsets,
generated choice, and per-mix replaced slots. Changing M therefore leaves the real subsets unchanged.
"""

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import shlex
import zipfile

import numpy as np
import PIL.Image

from dnnlib import util
from training.dataset_build import (RESIZE_FILTERS, ArchiveWriter, BadImage, DatasetToolError, archive_name,
                                    check_destination, decode_image, encode_png, image_extensions,
                                    is_image_name, is_power_of_two, json_bytes, ordered_map,
                                    progress_bar)

REAL_PREFIX = 'CelebAMask-HQ'
MIX_PREFIX = 'Mix-dataset'
CELEBA_IMAGE_DIR = 'CelebA-HQ-img'
MANIFEST_FORMAT = 'sg2ada-study-manifest/1'
STATS_NAME = 'generated-stats.csv'


# ----------------------------------------------------------------------------
# Pools and the selection plan.


def _natural_key(name):
    stem = os.path.splitext(os.path.basename(name))[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def find_celeba_images(celeba_dir):
    """The real pool: image files of `CelebA-HQ-img/` (or of the folder itself), in numeric order.

    Args:
        celeba_dir: The CelebAMask-HQ root or its CelebA-HQ-img folder.

    Returns:
        (image_root, [file names relative to image_root]).
    """
    if not celeba_dir or not os.path.isdir(celeba_dir):
        raise DatasetToolError(f'--celeba-dir: {celeba_dir} is not a folder')
    sub = os.path.join(celeba_dir, CELEBA_IMAGE_DIR)
    root = sub if os.path.isdir(sub) else celeba_dir
    ext = image_extensions()
    names = [n for n in os.listdir(root) if is_image_name(n, ext) and os.path.isfile(os.path.join(root, n))]
    return os.path.abspath(root), sorted(names, key=_natural_key)


def list_generated_images(generated_dir):
    """The generated pool: image files anywhere below `generated_dir`, sorted by relative path."""
    if not generated_dir or not os.path.isdir(generated_dir):
        raise DatasetToolError(f'--generated-dir: {generated_dir} is not a folder')
    ext = image_extensions()
    names = []
    for dirpath, _dirs, files in os.walk(generated_dir):
        for fname in files:
            rel = os.path.relpath(os.path.join(dirpath, fname), generated_dir).replace(os.sep, '/')
            if is_image_name(rel, ext):
                names.append(rel)
    return os.path.abspath(generated_dir), sorted(names)


@dataclasses.dataclass
class StudyPlan:
    """Which pool indices go where. Per set k: `subsets[k]` real indices (ascending = slot order),
    `replaced[k]` ascending slot positions taken over in the mix, `generated[k]` ascending generated
    indices, assigned to those slots in order."""
    subsets: list
    replaced: list
    generated: list


def plan_study_sets(num_real, num_gen, num_subsets, subset_size, num_generated, seed):
    """Choose the real subsets, the generated images and the replaced slots.

    Args:
        num_real, num_gen: Pool sizes.
        num_subsets: K.  subset_size: N.  num_generated: M (<= N).  seed: 0 <= seed < 2**32.

    Returns:
        StudyPlan.
    """
    K, N, M = num_subsets, subset_size, num_generated
    if num_real < K * N:
        raise DatasetToolError(f'--celeba-dir: found {num_real} real images, need '
                               f'--num-subsets x --subset-size = {K} x {N} = {K * N}')
    if num_gen < K * M:
        raise DatasetToolError(f'--generated-dir: found {num_gen} generated images, need '
                               f'--num-subsets x --num-generated = {K} x {M} = {K * M}')
    real = np.random.RandomState([seed, 0]).permutation(num_real)[:K * N]
    gen = np.random.RandomState([seed, 1]).permutation(num_gen)[:K * M]
    plan = StudyPlan(subsets=[], replaced=[], generated=[])
    for k in range(K):
        plan.subsets.append(sorted(int(i) for i in real[k * N:(k + 1) * N]))
        plan.generated.append(sorted(int(i) for i in gen[k * M:(k + 1) * M]))
        slots = np.random.RandomState([seed, 2, k]).choice(N, M, replace=False)
        plan.replaced.append(sorted(int(i) for i in slots))
    # The study's premise: no image is shared between subsets, none generated is reused.
    all_real = [i for s in plan.subsets for i in s]
    all_gen = [i for g in plan.generated for i in g]
    assert len(set(all_real)) == K * N, 'real subsets overlap'
    assert len(set(all_gen)) == K * M, 'a generated image is used twice'
    return plan


# ----------------------------------------------------------------------------
# Pass 1: hash and header-check every selected source (cheap: no full decode).


def inspect_file(path):
    """sha256 and header information of one file; never raises.

    Returns:
        dict(path, sha256, size (w, h) or None, mode, error or None).
    """
    out = dict(path=path, sha256=None, size=None, mode=None, error=None)
    try:
        with open(path, 'rb') as f:
            data = f.read()
        out['sha256'] = hashlib.sha256(data).hexdigest()
        with PIL.Image.open(io.BytesIO(data)) as img:
            out['size'], out['mode'] = tuple(img.size), img.mode
    except Exception as e:  # unreadable or not an image: reported together below
        out['error'] = f'{type(e).__name__}: {e}'
    return out


def _list_problems(problems, limit=5):
    text = ', '.join(problems[:limit])
    return text + (f', ... ({len(problems)} in all)' if len(problems) > limit else '')


def _check_pool(infos, flag, resolution):
    unreadable = [f'{os.path.basename(i["path"])} ({i["error"]})' for i in infos if i['error']]
    if unreadable:
        raise DatasetToolError(f'{flag}: cannot read {len(unreadable)} image(s): {_list_problems(unreadable)}')
    bad = [f'{os.path.basename(i["path"])} ({i["size"][0]}x{i["size"][1]})' for i in infos
           if i['size'][0] != i['size'][1] or i['size'][0] < resolution]
    if bad:
        raise DatasetToolError(f'{flag}: {len(bad)} image(s) are not square or smaller than '
                               f'{resolution}x{resolution}: {_list_problems(bad)}; remove them from the folder')


def _check_duplicates(real_infos, gen_infos):
    seen = {}
    for flag, infos in (('--celeba-dir', real_infos), ('--generated-dir', gen_infos)):
        for info in infos:
            other = seen.get(info['sha256'])
            if other is not None:
                raise DatasetToolError(f'{flag}: {info["path"]} is byte-identical to {other} '
                                       f'(sha256 {info["sha256"][:16]}...); remove the duplicate')
            seen[info['sha256']] = info['path']


# ----------------------------------------------------------------------------
# Pass 2: decode, resize, encode (in the pool).


_CHANNEL_NAMES = ('r', 'g', 'b')


def image_statistics(img):
    """Per-channel mean and std (0..255) of an RGB PIL image, for the review CSV."""
    arr = np.asarray(img, dtype=np.float64).reshape(-1, 3)
    return {**{f'mean_{c}': float(v) for c, v in zip(_CHANNEL_NAMES, arr.mean(0))},
            **{f'std_{c}': float(v) for c, v in zip(_CHANNEL_NAMES, arr.std(0))}}


def convert_study_image(task):
    """Decode one source, make it RGB, resize it to R x R, and encode it as PNG.

    Args:
        task: (path, resolution, resize_filter, want_stats).

    Returns:
        dict(path, png, sha256 (of the PNG), notes, stats (or None), error (or None)).
    """
    path, resolution, resize_filter, want_stats = task
    out = dict(path=path, png=None, sha256=None, notes=[], stats=None, error=None)
    try:
        with open(path, 'rb') as f:
            img, note = decode_image(f.read())
    except (BadImage, OSError) as e:
        out['error'] = str(e)
        return out
    if note:
        out['notes'].append(note)
    if img.mode != 'RGB':
        out['notes'].append(f'{img.mode} -> RGB')
        img = img.convert('RGB')
    if want_stats:
        out['stats'] = dict(width=img.size[0], height=img.size[1], **image_statistics(img))
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), RESIZE_FILTERS[resize_filter])
    out['png'] = encode_png(img)
    out['sha256'] = hashlib.sha256(out['png']).hexdigest()
    return out


# ----------------------------------------------------------------------------
# The build.


def set_names(num_subsets, with_mix=True):
    """Output set names, e.g. ['CelebAMask-HQ1', ..., 'Mix-dataset1', ...]."""
    names = [f'{REAL_PREFIX}{k + 1}' for k in range(num_subsets)]
    return names + ([f'{MIX_PREFIX}{k + 1}' for k in range(num_subsets)] if with_mix else [])


def manifest_path(dest, set_name):
    return os.path.join(dest, f'{set_name}.manifest.json')


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
            raise DatasetToolError(f'{flag}: {message}')


def _inspect_selected(plan, real_root, real_names, gen_root, gen_names, resolution, workers):
    real_paths = [os.path.join(real_root, real_names[i]) for s in plan.subsets for i in s]
    gen_paths = [os.path.join(gen_root, gen_names[i]) for g in plan.generated for i in g]
    infos = list(ordered_map(inspect_file, real_paths + gen_paths, workers, chunksize=16))
    real_infos, gen_infos = infos[:len(real_paths)], infos[len(real_paths):]
    _check_pool(real_infos, '--celeba-dir', resolution)
    _check_pool(gen_infos, '--generated-dir', resolution)
    _check_duplicates(real_infos, gen_infos)
    return {i['path']: i for i in infos}


def _tasks_for_set(k, plan, real_root, real_names, gen_root, gen_names, resolution, resize_filter):
    """Slot-ordered conversion tasks of subset k: each real image, each followed by its replacement."""
    replacement = dict(zip(plan.replaced[k], plan.generated[k]))
    tasks = []
    for slot, real_idx in enumerate(plan.subsets[k]):
        tasks.append(('real', slot, real_names[real_idx],
                      (os.path.join(real_root, real_names[real_idx]), resolution, resize_filter, False)))
        if slot in replacement:
            name = gen_names[replacement[slot]]
            tasks.append(('generated', slot, name, (os.path.join(gen_root, name), resolution, resize_filter, True)))
    return tasks


def rebuild_command(options, dest):
    """The command line that rebuilds the sets from `options` (recorded in every manifest)."""
    args = ['python', 'dataset_tool.py', 'celebamask', f'--celeba-dir={options["celeba_dir"]}']
    if options['generated_dir']:
        args.append(f'--generated-dir={options["generated_dir"]}')
    args.append(f'--dest={os.path.abspath(dest)}')
    args += [f'--{key.replace("_", "-")}={options[key]}' for key in
             ('num_subsets', 'subset_size', 'num_generated', 'resolution', 'seed', 'resize_filter')]
    return ' '.join(shlex.quote(a) for a in args)


def _manifest(set_name, entries, options, zip_path):
    counts = {kind: sum(e['kind'] == kind for e in entries) for kind in ('real', 'generated')}
    return dict(format=MANIFEST_FORMAT, set=set_name, zip=os.path.basename(zip_path),
                zip_sha256=util.sha256_file(zip_path), num_images=len(entries), counts=counts,
                options=options, command=rebuild_command(options, os.path.dirname(zip_path)), images=entries)


def build_study_sets(celeba_dir, generated_dir, dest, num_subsets=5, subset_size=1000, num_generated=200,
                     resolution=512, seed=0, resize_filter='lanczos', overwrite=False, workers=None, log=print,
                     progress=False):
    """Build the real subsets, the mixes, their manifests and the generated-image statistics.

    Args:
        celeba_dir: CelebAMask-HQ root or its CelebA-HQ-img folder.
        generated_dir: Folder of generated faces (may be None when num_generated == 0: no mixes).
        dest: Output folder (created).
        num_subsets, subset_size, num_generated: K, N, M.
        resolution: Output side R (power of two); sources must be square and at least R.
        seed: Selection seed.
        resize_filter: 'lanczos', 'box' or 'bicubic'.
        overwrite: Replace existing outputs of the same names.
        workers: Process count (None/0 = all cores).
        log: Called with each summary line.
        progress: Show a progress bar.

    Returns:
        dict: set name -> manifest dict.
    """
    _check_options(num_subsets, subset_size, num_generated, resolution, seed, resize_filter, generated_dir)
    with_mix = num_generated > 0
    names = set_names(num_subsets, with_mix)
    for name in names:
        check_destination(os.path.join(dest, name + '.zip'), overwrite, flag='--dest')

    real_root, real_names = find_celeba_images(celeba_dir)
    gen_root, gen_names = list_generated_images(generated_dir) if with_mix else (None, [])
    plan = plan_study_sets(len(real_names), len(gen_names), num_subsets, subset_size, num_generated, seed)
    log(f'Checking {num_subsets * (subset_size + num_generated)} selected source images...')
    infos = _inspect_selected(plan, real_root, real_names, gen_root, gen_names, resolution, workers)

    options = dict(celeba_dir=real_root, generated_dir=gen_root, num_subsets=num_subsets, subset_size=subset_size,
                   num_generated=num_generated, resolution=resolution, seed=seed, resize_filter=resize_filter)
    os.makedirs(dest, exist_ok=True)
    manifests, stats_rows = {}, []
    bar = progress_bar(num_subsets * (subset_size + num_generated), progress)
    for k in range(num_subsets):
        tasks = _tasks_for_set(k, plan, real_root, real_names, gen_root, gen_names, resolution, resize_filter)
        sets = _write_pair(k, tasks, infos, dest, overwrite, with_mix, workers, bar, stats_rows)
        for set_name, entries in sets.items():
            zip_path = os.path.join(dest, set_name + '.zip')
            manifests[set_name] = _manifest(set_name, entries, options, zip_path)
            util.atomic_write_text(manifest_path(dest, set_name), json_bytes(manifests[set_name]).decode('utf-8'))
    bar.close()
    if with_mix:
        _write_stats_csv(os.path.join(dest, STATS_NAME), stats_rows)
    for name in names:
        m = manifests[name]
        log(f'{name}.zip: {m["num_images"]} images ({m["counts"]["real"]} real, {m["counts"]["generated"]} '
            f'generated) at {resolution}x{resolution}')
    if with_mix:
        log(f'Per-image statistics of the generated images: {os.path.join(dest, STATS_NAME)}')
    return manifests


def _write_pair(k, tasks, infos, dest, overwrite, with_mix, workers, bar, stats_rows):
    """Convert subset k's tasks and stream them into CelebAMask-HQk.zip and Mix-datasetk.zip."""
    real_name, mix_name = f'{REAL_PREFIX}{k + 1}', f'{MIX_PREFIX}{k + 1}'
    entries = {real_name: [], mix_name: []}
    replaced = {slot for kind, slot, _n, _t in tasks if kind == 'generated'}
    writers = [ArchiveWriter(os.path.join(dest, real_name + '.zip'), overwrite)]
    if with_mix:
        writers.append(ArchiveWriter(os.path.join(dest, mix_name + '.zip'), overwrite))
    stack = contextlib.ExitStack()
    try:
        results = stack.enter_context(contextlib.closing(
            ordered_map(convert_study_image, [t[3] for t in tasks], workers, chunksize=4)))
        for (kind, slot, source, task), result in zip(tasks, results):
            if result['error'] is not None:
                flag = '--celeba-dir' if kind == 'real' else '--generated-dir'
                raise DatasetToolError(f'{flag}: {task[0]}: {result["error"]}')
            entry = dict(archive_name=archive_name(slot), kind=kind, source=source, source_path=task[0],
                         source_sha256=infos[task[0]]['sha256'], sha256=result['sha256'], notes=result['notes'])
            targets = [0] if kind == 'real' else [1]
            if kind == 'real' and slot not in replaced and with_mix:
                targets.append(1)
            for t in targets:
                writers[t].add(entry['archive_name'], result['png'])
                entries[[real_name, mix_name][t]].append(entry)
            if kind == 'generated':
                stats_rows.append(dict(set=mix_name, archive_name=entry['archive_name'], source=source,
                                       source_sha256=entry['source_sha256'], **result['stats']))
            bar.update(1)
        stack.close()
        for w in writers:
            w.add('dataset.json', json_bytes(dict(labels=None)))
            w.commit()
    except BaseException:
        stack.close()  # stop the workers first
        for w in writers:
            w.abort()
        raise
    return {name: e for name, e in entries.items() if e}


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
    util.atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------
# Verification.


def _resolve_manifest(path):
    if path.lower().endswith('.zip'):
        path = path[:-4] + '.manifest.json'
    if not os.path.isfile(path):
        raise DatasetToolError(f'{path}: manifest not found')
    with open(path, encoding='utf-8') as f:
        manifest = json.load(f)
    if manifest.get('format') != MANIFEST_FORMAT:
        raise DatasetToolError(f'{path}: not a study manifest (format {manifest.get("format")!r})')
    return path, manifest


def verify_manifest(path, celeba_dir=None, generated_dir=None, check_zip=True, workers=None):
    """Re-hash a set's sources (and its zip) against its manifest.

    Args:
        path: `<set>.manifest.json`, or the set's .zip (the manifest beside it is used).
        celeba_dir, generated_dir: Pool locations if they moved (default: those recorded).
        check_zip: Also check the zip beside the manifest, entry by entry.
        workers: Process count for hashing.

    Returns:
        list of problem strings (empty = verified).
    """
    path, manifest = _resolve_manifest(path)
    opts = manifest['options']
    roots = {'real': opts['celeba_dir'], 'generated': opts['generated_dir']}
    if celeba_dir is not None:
        roots['real'] = find_celeba_images(celeba_dir)[0]
    if generated_dir is not None:
        roots['generated'] = os.path.abspath(generated_dir)
    images = manifest['images']
    paths = [os.path.join(roots[e['kind']], e['source']) for e in images]
    problems = []
    for entry, src, info in zip(images, paths, ordered_map(inspect_file, paths, workers, chunksize=16)):
        if info['sha256'] is None:
            problems.append(f'{src}: missing or unreadable ({info["error"]})')
        elif info['sha256'] != entry['source_sha256']:
            problems.append(f'{src}: sha256 differs from the manifest (source changed)')
    if check_zip:
        problems += _verify_zip(os.path.join(os.path.dirname(path), manifest['zip']), manifest)
    return problems


def _verify_zip(zip_path, manifest):
    if not os.path.isfile(zip_path):
        return [f'{zip_path}: missing']
    if util.sha256_file(zip_path) == manifest['zip_sha256']:
        return []
    problems = [f'{zip_path}: sha256 differs from the manifest']
    with zipfile.ZipFile(zip_path) as zf:
        present = set(zf.namelist())
        for e in manifest['images']:
            if e['archive_name'] not in present:
                problems.append(f'{zip_path}: {e["archive_name"]} missing')
            elif hashlib.sha256(zf.read(e['archive_name'])).hexdigest() != e['sha256']:
                problems.append(f'{zip_path}: {e["archive_name"]} differs from the manifest')
    return problems

# ----------------------------------------------------------------------------
