"""The two error kinds of the dataset builder, and one-line messages for failed writes."""

import contextlib
import errno


class DatasetToolError(Exception):
    """A user-input problem; the message is one line naming the flag or file."""


class BadImage(Exception):
    """One input image cannot be used; the message is the reason recorded in the report."""


_WRITE_REASONS = {
    errno.ENOSPC: 'no space left on the device (free some space or choose another place)',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'the file system is read-only',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
    errno.ENOTDIR: 'a part of the path is a file, not a folder',
    errno.EEXIST: 'a part of the path is a file, not a folder',
    errno.EISDIR: 'it is a folder',
}


def write_error(exc, flag, dest):
    """DatasetToolError for an OSError met while writing `dest`: one line naming the flag and path."""
    reason = _WRITE_REASONS.get(exc.errno, exc.strerror or str(exc))
    return DatasetToolError(f'{flag}: cannot write {dest}: {reason}')


@contextlib.contextmanager
def writing(dest, flag='--dest'):
    """Turn an OSError raised inside the block (while writing `dest`) into a one-line DatasetToolError."""
    try:
        yield
    except OSError as e:
        raise write_error(e, flag, dest) from None
