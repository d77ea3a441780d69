"""Generic utilities with no torch dependency (the bottom layer of the package stack)."""

from .util import EasyDict, make_cache_dir_path  # noqa: F401
