"""Lazy, cached, build-once compilation of the CUDA plugins in torch_utils/ops.

Policy (docs/design.md, "Ops"):
- Nothing is compiled at import time. A plugin is built the first time a CUDA tensor reaches an op whose
  impl is 'auto' or 'cuda'.
- Each plugin gets exactly ONE build attempt per process. Success is cached; so is failure, so a broken
  toolchain costs one attempt and one warning, never a rebuild per call (an upstream pain point).
- The build name carries a hash of the source and header contents (plus the torch/CUDA versions and the
  build options), so an edited .cu never silently reuses a stale build from ~/.cache/torch_extensions.
- impl='cuda' turns a failed build into a RuntimeError (PluginBuildError); impl='auto' warns once, naming
  the cause, and the op uses its pure-PyTorch reference from then on.

Toolchain discovery: nvcc is located through $CUDA_HOME, then $CUDA_PATH, then `nvcc` on $PATH, then
/usr/local/cuda. The directory found is exported as $CUDA_HOME (only when it was unset) because
torch.utils.cpp_extension reads it. ninja is looked up on $PATH and, failing that, next to the running
Python interpreter (a virtual environment that was not activated still has its ninja there).
"""

import glob
import hashlib
import os
import re
import shutil
import sys
import warnings

import torch

verbosity = 'brief'  # 'none': silent, 'brief': one line per plugin, 'full': the compiler's full output.

_plugins = dict()    # module_name -> loaded extension module
_failures = dict()   # module_name -> PluginBuildError raised by the one build attempt
_warned = set()      # module names whose fallback warning has been emitted


class PluginBuildError(RuntimeError):
    """A CUDA plugin could not be built or loaded. The message names the cause in one line."""


# ----------------------------------------------------------------------------------------------------------
# Toolchain discovery.

def _is_toolkit(root):
    """A usable CUDA toolkit root has nvcc and the runtime headers (a bare nvcc wrapper script does not)."""
    nvcc_name = 'nvcc.exe' if os.name == 'nt' else 'nvcc'
    return (os.path.isfile(os.path.join(root, 'bin', nvcc_name)) and
            os.path.isfile(os.path.join(root, 'include', 'cuda_runtime.h')))


def find_cuda_home():
    """Locate the CUDA toolkit that provides nvcc and the CUDA headers.

    Search order: $CUDA_HOME, $CUDA_PATH, the toolkit that the `nvcc` on $PATH belongs to (symlinks
    resolved), /usr/local/cuda, /usr/local/cuda-* (newest name first).

    Returns:
        The toolkit root, or None when no complete toolkit is found.
    """
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc.exe' if os.name == 'nt' else 'nvcc')
    if nvcc is not None:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ['/usr/local/cuda'] + sorted(glob.glob('/usr/local/cuda-*'), reverse=True)
    for root in candidates:
        if root and _is_toolkit(root):
            return root
    return None


def _prepare_toolchain():
    """Make nvcc and ninja findable by torch.utils.cpp_extension, or raise naming what is missing."""
    user_home = os.environ.get('CUDA_HOME')
    if user_home and not _is_toolkit(user_home):
        raise PluginBuildError(f'CUDA_HOME={user_home} has no bin/nvcc and include/cuda_runtime.h')
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise PluginBuildError('nvcc not found (install the CUDA toolkit, or set CUDA_HOME / put nvcc on PATH)')
    os.environ['CUDA_HOME'] = cuda_home
    if shutil.which('ninja') is None:
        venv_bin = os.path.dirname(sys.executable)
        if shutil.which('ninja', path=venv_bin) is None:
            raise PluginBuildError('ninja not found (pip install ninja)')
        os.environ['PATH'] = venv_bin + os.pathsep + os.environ.get('PATH', '')
    from torch.utils import cpp_extension
    # cpp_extension resolves CUDA_HOME once, when it is first imported, and may have guessed a directory
    # without headers (e.g. /usr/local from a /usr/local/bin/nvcc wrapper script). Hand it the toolkit we
    # validated (a public module attribute).
    cpp_extension.CUDA_HOME = cuda_home
    return cpp_extension


def build_name(module_name, files, build_kwargs):
    """Name a build after the module and a hash of everything that determines the binary.

    Args:
        module_name: Base name, e.g. 'upfirdn2d_plugin'.
        files: Source and header paths; their basenames and contents are hashed.
        build_kwargs: Extra arguments for cpp_extension.load (hashed through their repr).

    Returns:
        '<module_name>_<12 hex digits>'.
    """
    h = hashlib.sha256()
    for path in files:
        h.update(os.path.basename(path).encode())
        with open(path, 'rb') as f:
            h.update(f.read())
    h.update(repr(sorted(build_kwargs.items())).encode())
    h.update(f'{torch.__version__}|{torch.version.cuda}'.encode())
    return f'{module_name}_{h.hexdigest()[:12]}'


def _summarize_error(exc):
    """One line that names the cause: the first compiler/linker error line if there is one."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Compiler diagnostics first ('error:', 'fatal error', 'nvcc fatal :'), then looser matches; torch's
    # own 'Error building extension' wrapper line is only the last resort.
    details = [line for line in lines if not line.startswith('Error building extension')]
    for pattern in (r'fatal error|\berror\s*:|\bfatal\s*:', r'\berror\b|not found|No such file|undefined'):
        for line in details:
            if re.search(pattern, line, re.IGNORECASE):
                return line[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _build(module_name, sources, headers, build_kwargs):
    """Compile and load one plugin (tests monkeypatch this to simulate a broken toolchain)."""
    cpp_extension = _prepare_toolchain()
    name = build_name(module_name, list(sources) + list(headers), build_kwargs)
    include_dirs = sorted({os.path.dirname(os.path.abspath(p)) for p in list(sources) + list(headers)})
    return cpp_extension.load(name=name, sources=list(sources), extra_include_paths=include_dirs,
                              verbose=(verbosity == 'full'), **build_kwargs)


# ----------------------------------------------------------------------------------------------------------
# Public entry points.

def get_plugin(module_name, sources, headers=None, **build_kwargs):
    """Build (once per process) and return a CUDA extension module.

    Args:
        module_name: Plugin name, e.g. 'bias_act_plugin'. Caching is keyed by this name.
        sources: .cpp/.cu paths.
        headers: Header paths; they are hashed into the build name so edits force a rebuild.
        **build_kwargs: Passed to torch.utils.cpp_extension.load (e.g. extra_cuda_cflags).

    Returns:
        The loaded extension module.

    Raises:
        PluginBuildError: The build failed, now or on the one earlier attempt in this process.
    """
    if module_name in _plugins:
        return _plugins[module_name]
    if module_name in _failures:
        raise _failures[module_name]
    if verbosity in ('brief', 'full'):
        print(f'Setting up CUDA plugin "{module_name}"... ', end='', flush=True)
    try:
        module = _build(module_name, sources, headers or [], build_kwargs)
    except Exception as exc:  # noqa: BLE001 -- any failure is recorded and re-raised with its cause
        if verbosity in ('brief', 'full'):
            print('Failed!', flush=True)
        err = PluginBuildError(f'could not build CUDA plugin "{module_name}": {_summarize_error(exc)}')
        err.__cause__ = exc
        _failures[module_name] = err
        raise err from exc
    if verbosity in ('brief', 'full'):
        print('Done.', flush=True)
    _plugins[module_name] = module
    return module


def get_plugin_or_none(module_name, sources, headers=None, **build_kwargs):
    """Like get_plugin, but a failed build warns once per plugin and returns None (impl='auto')."""
    try:
        return get_plugin(module_name, sources, headers, **build_kwargs)
    except PluginBuildError as err:
        if module_name not in _warned:
            _warned.add(module_name)
            warnings.warn(f'{err}. Using the pure-PyTorch reference implementation for the rest of this '
                          f'process (correct, but slower). Pass impl="cuda" to make this an error.',
                          RuntimeWarning, stacklevel=3)
        return None


def plugin_loader(module_name, sources, headers=None, **build_kwargs):
    """The loader an op module keeps for its plugin (nothing is built until it is called).

    Returns:
        load(required) -> the plugin; with required=False a failed build warns once and gives None,
        with required=True it raises PluginBuildError. This is the `load_plugin` argument of
        choose_impl and plugin_usable.
    """
    def load(required):
        if required:
            return get_plugin(module_name, sources, headers, **build_kwargs)
        return get_plugin_or_none(module_name, sources, headers, **build_kwargs)
    return load


def plugin_status(module_name):
    """'built', 'failed' or 'untried' for a plugin in this process (no build is attempted)."""
    if module_name in _plugins:
        return 'built'
    return 'failed' if module_name in _failures else 'untried'


def choose_impl(x, impl, load_plugin):
    """The implementation an op call takes, shared by every op: 'ref' or 'cuda'.

    Args:
        x: The op's input tensor.
        impl: 'auto' (CUDA kernel for CUDA tensors when the plugin builds, else the reference),
            'ref', or 'cuda' (the kernel or an error).
        load_plugin: The op's loader, called as load_plugin(required) -> plugin or None; with
            required=True a failed build raises PluginBuildError.
    """
    if impl not in ('auto', 'ref', 'cuda'):
        raise ValueError(f"impl must be 'auto', 'ref' or 'cuda', got {impl!r}")
    if impl == 'ref':
        return 'ref'
    if x.device.type != 'cuda':
        if impl == 'cuda':
            raise ValueError(f"impl='cuda' needs a CUDA tensor, got one on {x.device}")
        return 'ref'
    return 'cuda' if load_plugin(required=(impl == 'cuda')) is not None else 'ref'


def plugin_usable(load_plugin):
    """True when a CUDA device exists and the op's plugin is built (or builds now); never raises."""
    if not torch.cuda.is_available():
        return False
    return load_plugin(required=False) is not None
