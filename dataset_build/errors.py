"""The two error kinds of the dataset builder, and one-line messages for failed writes."""

import contextlib

from dnnlib import util


class DatasetToolError(Exception):
    """A user-input problem; the message is one line naming the flag or file."""


class UsageError(DatasetToolError):
    """The command line itself is wrong (an option's value, a missing option, a path that does not
    exist): exit status 2, as click's own usage errors."""


class BadImage(Exception):
    """One input image cannot be used; the message is the reason recorded in the report."""


def write_error(exc, flag, dest):
    """DatasetToolError for an OSError met while writing `dest`: one line naming the flag and path."""
    return DatasetToolError(f'{flag}: cannot write {dest}: {util.os_error_reason(exc)}')


@contextlib.contextmanager
def writing(dest, flag='--dest'):
    """Turn an OSError raised inside the block (while writing `dest`) into a one-line DatasetToolError."""
    try:
        yield
    except OSError as e:
        raise write_error(e, flag, dest) from None
