"""Checking a study set against its manifest: the sources, and the zip entry by entry.

A damaged zip (an entry with a bad CRC) or a truncated one (no central directory) is read as far as
it goes, so the report says which entries are damaged or missing, in one line per zip.
"""

import hashlib
import json
import os
import struct
import zipfile
import zlib

from dataset_build.errors import DatasetToolError
from dataset_build.parallel import ordered_map, progress_bar
from dataset_build.pools import list_real_pool
from dnnlib import util

MANIFEST_FORMATS = ('sg2ada-study-manifest/1', 'sg2ada-study-manifest/2')
_LOCAL_HEADER = struct.Struct('<4sHHHHHIIIHH')  # zip local file header, 30 bytes
_LOCAL_MAGIC = b'PK\x03\x04'


def _resolve_manifest(path):
    if path.lower().endswith('.zip'):
        path = path[:-4] + '.manifest.json'
    if not os.path.isfile(path):
        raise DatasetToolError(f'{path}: manifest not found')
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetToolError(f'{path}: cannot read the manifest ({e})') from None
    if not isinstance(manifest, dict) or manifest.get('format') not in MANIFEST_FORMATS:
        raise DatasetToolError(f'{path}: not a study manifest')
    missing = [key for key in ('options', 'images', 'zip', 'zip_sha256') if key not in manifest]
    if missing:
        raise DatasetToolError(f'{path}: incomplete manifest (no {", ".join(missing)})')
    return path, manifest


def _hash_source(path):
    try:
        return util.sha256_file(path), None
    except OSError as e:
        return None, e.strerror or str(e)


def verify_manifest(path, celeba_dir=None, generated_dir=None, check_zip=True, workers=None, progress=False):
    """Re-hash a set's sources (and its zip) against its manifest.

    Args:
        path: `<set>.manifest.json`, or the set's .zip (the manifest beside it is used).
        celeba_dir, generated_dir: Pool locations if they moved (default: those recorded).
        check_zip: Also check the zip beside the manifest, entry by entry.
        workers: Process count for hashing.
        progress: Show a progress bar.

    Returns:
        list of problem lines (empty = verified): one per changed source, one for the zip.
    """
    path, manifest = _resolve_manifest(path)
    opts = manifest['options']
    roots = {'real': opts['celeba_dir'], 'generated': opts['generated_dir']}
    if celeba_dir is not None:
        roots['real'] = list_real_pool(celeba_dir).root
    if generated_dir is not None:
        roots['generated'] = os.path.abspath(generated_dir)
    images = manifest['images']
    paths = [os.path.join(roots[e['kind']], *e['source'].split('/')) for e in images]
    problems = []
    bar = progress_bar(len(paths), progress, desc='Hashing')
    hashes = ordered_map(_hash_source, paths, workers, chunksize=16)
    try:
        for (sha, error), entry, src in zip(hashes, images, paths):
            if sha is None:
                problems.append(f'{src}: missing or unreadable ({error})')
            elif sha != entry['source_sha256']:
                problems.append(f'{src}: sha256 differs from the manifest (source changed)')
            bar.update(1)
    finally:
        hashes.close()
        bar.close()
    if check_zip:
        line = verify_zip(os.path.join(os.path.dirname(path), manifest['zip']), manifest)
        problems += [line] if line else []
    return problems


# ----------------------------------------------------------------------------
# Zips.


def _read_members(zf):
    """name -> sha256 of each intact entry, name -> reason for each damaged one."""
    good, damaged = {}, {}
    for info in zf.infolist():
        try:
            with zf.open(info) as f:
                good[info.filename] = util.update_hash_from_file(hashlib.sha256(), f).hexdigest()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            damaged[info.filename] = 'bad CRC' if 'CRC' in str(e) else str(e)
    return good, damaged


def _scan_local_headers(path):
    """Like _read_members for a zip without its central directory: walk the entries from the start."""
    good, damaged = {}, {}
    with open(path, 'rb') as f:
        while True:
            header = f.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
                break
            _magic, _ver, flags, method, _t, _d, crc, csize, _usize, nlen, elen = _LOCAL_HEADER.unpack(header)
            name = f.read(nlen).decode('utf-8' if flags & 0x800 else 'cp437', errors='replace')
            f.read(elen)
            if flags & 0x08 or method != zipfile.ZIP_STORED or csize == 0xFFFFFFFF:
                break  # sizes not in the local header (not written by this tool): cannot walk further
            data = f.read(csize)
            if len(data) < csize:
                damaged[name] = 'cut off'
                break
            if zlib.crc32(data) != crc:
                damaged[name] = 'bad CRC'
            else:
                good[name] = hashlib.sha256(data).hexdigest()
    return good, damaged


def _names(entries, limit=10):
    shown = ', '.join(entries[:limit])
    return shown + (f', ... ({len(entries) - limit} more)' if len(entries) > limit else '')


def verify_zip(zip_path, manifest):
    """None when the zip matches the manifest, else one line saying which entries are damaged/missing."""
    if not os.path.isfile(zip_path):
        return f'{zip_path}: missing'
    if util.sha256_file(zip_path) == manifest['zip_sha256']:
        return None
    try:
        with zipfile.ZipFile(zip_path) as zf:
            good, damaged = _read_members(zf)
        truncated = False
    except zipfile.BadZipFile:
        good, damaged = _scan_local_headers(zip_path)
        truncated = True
    expected = manifest['images']
    missing = [e['archive_name'] for e in expected if e['archive_name'] not in good and e['archive_name'] not in damaged]
    differs = [e['archive_name'] for e in expected if e['archive_name'] in good and good[e['archive_name']] != e['sha256']]
    bad = [e['archive_name'] for e in expected if e['archive_name'] in damaged]
    parts = ['truncated (no central directory)'] if truncated else []
    parts += [f'{len(bad)} of {len(expected)} entries damaged: {_names(bad)}'] if bad else []
    parts += [f'{len(missing)} of {len(expected)} entries missing: {_names(missing)}'] if missing else []
    parts += [f'{len(differs)} entries differ from the manifest: {_names(differs)}'] if differs else []
    if not parts:
        parts = ['every image entry is intact, but the file differs from the manifest (extra or rewritten entries)']
    return f'{zip_path}: ' + '; '.join(parts)
