"""Deterministic archives (zip or folder) that appear at their destination only when complete."""

import contextlib
import json
import os
import shutil
import tempfile
import zipfile

from dataset_build.errors import DatasetToolError
from dataset_build.parallel import interrupts_deferred
from dnnlib import util

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest date zip can store: fixed so archives are reproducible


def archive_name(idx):
    """Upstream's name for input image `idx`: '00000/img00000000.png'."""
    digits = f'{idx:08d}'
    return f'{digits[:5]}/img{digits}.png'


def json_bytes(obj):
    """Deterministic, human-readable JSON bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode('utf-8')


def add_zip_entry(zf, name, data):
    """Store one entry with fixed timestamp, host and permissions, so equal inputs give equal bytes."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix, whatever the host
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


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

    Zip entries are stored uncompressed in the order added; see add_zip_entry.
    """

    def __init__(self, dest, overwrite=False, flag='--dest'):
        check_destination(dest, overwrite, flag)
        self.dest = dest
        self.is_zip = dest.lower().endswith('.zip')
        self._stack = contextlib.ExitStack()
        self._names = set()
        self._tmpdir = None
        try:
            with interrupts_deferred():  # a Ctrl-C now would leak the temporary output: take it after
                self._open_temporary()
        except BaseException:
            self.abort()
            raise

    def _open_temporary(self):
        parent = os.path.dirname(os.path.abspath(self.dest))
        os.makedirs(parent, exist_ok=True)
        if self.is_zip:
            f = self._stack.enter_context(util.atomic_open(self.dest, 'wb'))
            self._zip = self._stack.enter_context(zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED))
        else:
            self._tmpdir = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(self.dest)) + '.',
                                            dir=parent)

    def add(self, name, data):
        """Add one entry (a '/'-separated relative name)."""
        if name in self._names:
            raise ValueError(f'duplicate archive entry {name}')
        self._names.add(name)
        if self.is_zip:
            add_zip_entry(self._zip, name, data)
            return
        path = os.path.join(self._tmpdir, *name.split('/'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)

    def commit(self):
        """Finish the archive and move it to `dest` (replacing what was there)."""
        if self.is_zip:
            self._stack.close()  # closes the zip, then atomic_open renames the temp file onto dest
            os.chmod(self.dest, util.new_file_mode())
            return
        os.chmod(self._tmpdir, 0o777 & ~util.current_umask())
        replace_path(self._tmpdir, self.dest)

    def abort(self):
        """Discard everything written so far."""
        if self.is_zip:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError('aborted'), None)  # atomic_open removes its temp
        elif self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def replace_path(src, dest):
    """Move `src` onto `dest`, replacing a file or a folder; the old one is removed after the swap."""
    old = None
    if os.path.lexists(dest):
        old = tempfile.mkdtemp(prefix='.old.', dir=os.path.dirname(os.path.abspath(dest)))
        os.replace(dest, os.path.join(old, 'x'))
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
