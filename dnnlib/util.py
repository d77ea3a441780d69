"""Small generic helpers: attribute dicts, construct-by-name, atomic writes, cached downloads.

This module is the bottom layer: it must not import torch or any other package of this project.
"""

import contextlib
import errno
import functools
import hashlib
import importlib
import os
import re
import sys
import tempfile
import time
import urllib.parse

# ----------------------------------------------------------------------------
# Attribute dictionary.


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes (`d.lr` == `d['lr']`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


# ----------------------------------------------------------------------------
# Construct objects from dotted names, so that kwargs dicts (and training_options.json) can name
# classes and functions without importing them at the call site.


def get_obj_by_name(name: str):
    """Resolve 'package.module.attr' to the object it names; a clear error if it does not exist."""
    module_name, _, attr = name.rpartition('.')
    if not module_name:
        raise ValueError(f'not a dotted name: {name!r}')
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f'cannot import module {module_name!r} for {name!r}: {e}') from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f'module {module_name!r} has no attribute {attr!r}') from None


def call_func_by_name(*args, func_name: str, **kwargs):
    """Call the function named by `func_name` with the remaining arguments."""
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise ValueError(f'{func_name!r} is not callable')
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name: str, **kwargs):
    """Instantiate the class named by `class_name` with the remaining arguments."""
    return call_func_by_name(*args, func_name=class_name, **kwargs)


# ----------------------------------------------------------------------------
# Formatting.


def format_time(seconds) -> str:
    """Human-readable duration: '12s', '3m 05s', '2h 03m 05s' or '1d 02h 03m'."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


# ----------------------------------------------------------------------------
# Atomic file writes: readers (and a crash) never see a half-written file.


@contextlib.contextmanager
def atomic_open(path, mode='wb'):
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    if mode not in ('w', 'wb'):
        raise ValueError('atomic_open only supports write modes "w" and "wb"')
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; outputs get the usual 0644 (umask)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def current_umask():
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode():
    """The mode a plain open() gives a new file (0644 under the usual umask); mkstemp gives 0600."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path, data: bytes):
    with atomic_open(path, 'wb') as f:
        f.write(data)


def atomic_write_text(path, text: str):
    with atomic_open(path, 'w') as f:
        f.write(text)


# ----------------------------------------------------------------------------
# Output paths: fail early and in one line.

_ERRNO_HINTS = {
    errno.ENOSPC: 'no space left on device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
    errno.ENOTDIR: 'a file is in the way: a part of the path is a file, not a folder',
    errno.EEXIST: 'a file is in the way: a part of the path is a file, not a folder',
    errno.EISDIR: 'it is a folder',
}


def os_error_reason(err: OSError) -> str:
    """The cause of a failed write in a few words (a hint for the common errnos, else the OS's text)."""
    return _ERRNO_HINTS.get(err.errno) or err.strerror or str(err) or type(err).__name__


def os_error_line(err: OSError, what=None) -> str:
    """One line for an OSError on an output path: '<what>: <path>: <reason>', no traceback.

    Args:
        err: the OSError (its filename, when set, is the path that failed).
        what: optional label in front, e.g. a flag name such as '--outdir'.
    """
    reason = os_error_reason(err)
    parts = [what] if what else []
    if err.filename is not None:
        parts.append(os.fspath(err.filename))
    return ': '.join(parts + [reason])


def check_output_dir(path) -> str:
    """Prove, without writing anything, that directory `path` exists or could be created and would
    take files (its nearest existing ancestor is a writable directory on a writable file system).

    Raises:
        OSError with filename `path`: ENOTDIR when a file is in the way, EROFS or EACCES.
    """
    path = os.fspath(path)
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    code = None
    if not os.path.isdir(existing):
        code = errno.ENOTDIR
    elif not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    if code is not None:
        raise OSError(code, os.strerror(code), path)
    return path


def ensure_output_dir(path) -> str:
    """Create directory `path` (with parents) and prove it is writable, before any real work starts.

    Raises:
        OSError with filename `path` when a file is in the way, the file system is read-only or full,
        or the directory cannot be written; a temporary probe file is never left behind.
    """
    path = check_output_dir(path)
    os.makedirs(path, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=path)
    except OSError as e:  # the error names the folder the user gave, not the probe
        raise OSError(e.errno, e.strerror, path) from None
    os.close(fd)
    os.remove(probe)
    return path


def update_hash_from_file(h, f, chunk=1 << 20):
    """Feed the rest of binary file object `f` into hash `h` in `chunk`-byte reads (bounded memory)."""
    while True:
        block = f.read(chunk)
        if not block:
            return h
        h.update(block)


def sha256_file(path, chunk=1 << 20) -> str:
    with open(path, 'rb') as f:
        return update_hash_from_file(hashlib.sha256(), f, chunk).hexdigest()


# ----------------------------------------------------------------------------
# Image file names (the dataset reader and the dataset builder agree on what counts as an image).


@functools.lru_cache(maxsize=None)
def image_extensions() -> frozenset:
    """Lower-case file extensions PIL can decode ('.png', '.jpg', ...)."""
    import PIL.Image  # here, so importing dnnlib stays free of PIL
    PIL.Image.init()
    return frozenset(ext.lower() for ext in PIL.Image.EXTENSION)


def is_image_name(name, extensions=None) -> bool:
    """True for names with an image extension; macOS resource forks ('._x', '__MACOSX/') excluded.

    Finder-made zips carry AppleDouble files with image extensions that are not images.
    """
    extensions = image_extensions() if extensions is None else extensions
    name = name.replace('\\', '/')
    base = name.rsplit('/', 1)[-1]
    if base.startswith('._') or name.startswith('__MACOSX/'):
        return False
    return os.path.splitext(base)[1].lower() in extensions


# ----------------------------------------------------------------------------
# Cache directory and URL opening.

_cache_dir_override = None


def set_cache_dir(path):
    global _cache_dir_override
    _cache_dir_override = path


def make_cache_dir_path(*paths) -> str:
    """Path inside the cache root: set_cache_dir(), $DNNLIB_CACHE_DIR, ~/.cache/dnnlib, or <tmp>/.cache/dnnlib."""
    if _cache_dir_override is not None:
        root = _cache_dir_override
    elif 'DNNLIB_CACHE_DIR' in os.environ:
        root = os.environ['DNNLIB_CACHE_DIR']
    elif 'HOME' in os.environ:
        root = os.path.join(os.environ['HOME'], '.cache', 'dnnlib')
    elif 'USERPROFILE' in os.environ:
        root = os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib')
    else:
        root = os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib')
    return os.path.join(root, *paths)


_URL_RE = re.compile(r'^[a-z][a-z0-9+.-]*://')


def is_url(obj) -> bool:
    return isinstance(obj, str) and bool(_URL_RE.match(obj))


def url_cache_path(url: str, cache_dir=None) -> str:
    """Where `open_url` keeps a downloaded copy of `url`: <cache>/downloads/<md5(url)>_<file name>."""
    cache_dir = cache_dir or make_cache_dir_path('downloads')
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    name = re.sub(r'[^0-9A-Za-z._-]', '_', name)
    return os.path.join(cache_dir, hashlib.md5(url.encode('utf-8')).hexdigest() + '_' + name)


def download_to_cache(url: str, cache_dir=None, num_attempts=5, expected_sha256=None, expected_size=None,
                      verbose=True) -> str:
    """Download `url` once into the cache (atomically) and return the local path.

    A cached file is reused only if it passes the optional size and sha256 checks; a download that
    fails them is discarded and reported, never left in the cache.
    """
    path = url_cache_path(url, cache_dir)
    if os.path.isfile(path) and _file_matches(path, expected_sha256, expected_size):
        return path

    import requests  # imported lazily: only downloads need it

    last_error = None
    for attempt in range(num_attempts):
        try:
            if verbose:
                print(f'Downloading {url} ...', file=sys.stderr, flush=True)
            with requests.get(url, stream=True, timeout=60) as res:
                res.raise_for_status()
                with atomic_open(path, 'wb') as f:
                    for block in res.iter_content(chunk_size=1 << 20):
                        f.write(block)
            if not _file_matches(path, expected_sha256, expected_size):
                os.remove(path)
                raise IOError(f'{url}: downloaded file does not match the expected size/sha256')
            return path
        except requests.exceptions.ConnectionError as e:
            # No route or no DNS: an offline machine. Retrying only delays the caller's fallback.
            last_error = e
            break
        except Exception as e:  # retried below; the last error is re-raised with the URL in it
            last_error = e
            time.sleep(min(2 ** attempt, 10))
    raise IOError(f'could not download {url}: {_short_reason(last_error)}') from last_error


def _short_reason(exc, limit=160) -> str:
    """One readable line for a download failure (requests nests long reprs of its causes)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if 'NameResolutionError' in text or 'Failed to resolve' in text:
        return 'host name not resolved (offline?)'
    if any(word in text for word in ('ProxyError', 'Connection refused', 'Max retries exceeded', 'timed out')):
        return 'cannot connect (offline, or blocked by a proxy or firewall?)'
    return text if len(text) <= limit else text[:limit] + '...'


def _file_matches(path, expected_sha256, expected_size) -> bool:
    if expected_size is not None and os.path.getsize(path) != expected_size:
        return False
    if expected_sha256 is not None and sha256_file(path) != expected_sha256.lower():
        return False
    return True


def resolve_path_or_url(path_or_url: str, **download_kwargs) -> str:
    """Local path for a file path, a file:// URL, or an http(s) URL (downloaded into the cache)."""
    if not is_url(path_or_url):
        if not os.path.isfile(path_or_url):
            raise FileNotFoundError(f'no such file: {path_or_url}')
        return path_or_url
    parsed = urllib.parse.urlparse(path_or_url)
    if parsed.scheme == 'file':
        local = urllib.parse.unquote(parsed.path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f'no such file: {path_or_url}')
        return local
    if parsed.scheme in ('http', 'https'):
        return download_to_cache(path_or_url, **download_kwargs)
    raise ValueError(f'unsupported URL scheme {parsed.scheme!r}: {path_or_url}')


def open_url(path_or_url: str, **download_kwargs):
    """Open a path or URL for binary reading (URLs are downloaded into the cache first)."""
    return open(resolve_path_or_url(path_or_url, **download_kwargs), 'rb')


# ----------------------------------------------------------------------------
# Tee stdout/stderr into a log file (run directories keep log.txt).


class Logger:
    """Duplicate everything written to stdout and stderr into `file_name` (append mode)."""

    def __init__(self, file_name=None, file_mode='a', should_flush=True):
        self.file = open(file_name, file_mode, buffering=1) if file_name else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        sys.stdout = self
        sys.stderr = self

    def write(self, text):
        if not text:
            return
        if self.file is not None:
            self.file.write(text)
        self.stdout.write(text)
        if self.should_flush:
            self.flush()

    def flush(self):
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()

    def isatty(self):
        return False

    def close(self):
        self.flush()
        if sys.stdout is self:
            sys.stdout = self.stdout
        if sys.stderr is self:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
