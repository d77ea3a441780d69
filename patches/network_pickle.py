"""Load NVIDIA's stylegan2-ada-pytorch network pickles (and our snapshots) without running code from them.

Upstream loads `network-snapshot-*.pkl` with plain `pickle.load`, and every network object in it is
rebuilt by exec()'ing the Python source stored inside the pickle (fact sheet 8.1, 12.26): opening a
downloaded pickle runs whatever code it carries. This module reads the same files safely:

1. `_SafeUnpickler.find_class` resolves only an allow-list of globals (containers, torch's tensor
   rebuild functions, numpy scalars/dtypes, EasyDict, and the persistent-object hook). Any other
   global (os.system, builtins.eval, subprocess.Popen, an arbitrary class, ...) raises
   `UnsafePickleError` naming it, before anything is called.
2. Tensor storages are embedded legacy `torch.save` blobs; they are read with
   `torch.load(..., weights_only=True)`.
3. Each persistent object becomes an inert `PersistentRecord` (class name, state); its `module_src`
   is kept as text and never executed.
4. `load_network_pkl` then builds OUR class of the same name from the record's recorded constructor
   arguments, and copies every tensor by name: a missing, unexpected or mis-shaped tensor is an error
   naming it.

TensorFlow-era pickles (dnnlib.tflib.network.Network) are refused: converting them would mean
reproducing upstream's TF converter, which we do not support.
"""

import codecs
import collections
import io
import os
import pickle
import warnings

import numpy as np
import torch

import dnnlib
from torch_utils import misc
from torch_utils import persistence

# Transfer-learning source networks published with stylegan2-ada-pytorch (fact sheet 2.3).
_CDN = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets'
RESUME_SPECS = {
    'ffhq256':     f'{_CDN}/ffhq-res256-mirror-paper256-noaug.pkl',
    'ffhq512':     f'{_CDN}/ffhq-res512-mirror-stylegan2-noaug.pkl',
    'ffhq1024':    f'{_CDN}/ffhq-res1024-mirror-stylegan2-noaug.pkl',
    'celebahq256': f'{_CDN}/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl',
    'lsundog256':  f'{_CDN}/lsundog-res256-paper256-kimg100000-noaug.pkl',
}

SNAPSHOT_KEYS = ('training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe')  # upstream order (fact sheet 3.7)
_MODULE_KEYS = ('G', 'D', 'G_ema', 'augment_pipe')
_PICKLE_PROTOCOL = 4  # readable by the Python 3.7+ environments upstream tools run in


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (nothing from it was executed)."""


class NetworkPickleError(ValueError):
    """The pickle is well-formed but does not describe networks we can build (names the problem)."""


# ----------------------------------------------------------------------------
# Inert stand-in for upstream's persistent objects.


class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` becomes under the safe loader.

    Attributes:
        class_name: e.g. 'Generator'.
        state: the object's pickled __dict__ (tensors in state['_parameters'/'_buffers'], child
            records in state['_modules'], constructor args in state['_init_args'/'_init_kwargs']).
        module_src: the embedded source text, kept for inspection only (never executed).
    """

    def __init__(self, class_name, state, module_src):
        self.class_name = class_name
        self.state = state
        self.module_src = module_src

    @property
    def init_args(self):
        return tuple(self.state.get('_init_args', ()))

    @property
    def init_kwargs(self):
        return dnnlib.EasyDict(self.state.get('_init_kwargs', {}))

    def __repr__(self):
        return f'PersistentRecord({self.class_name!r})'


def _record_from_meta(meta):
    if not isinstance(meta, dict):
        raise NetworkPickleError(f'persistent object: expected a meta dict, got {type(meta).__name__}')
    if meta.get('type') != 'class':
        raise NetworkPickleError(f'persistent object: unsupported type {meta.get("type")!r}')
    if meta.get('version') != persistence.FORMAT_VERSION:
        raise NetworkPickleError(f'persistent object {meta.get("class_name")!r}: unsupported format version '
                                 f'{meta.get("version")!r} (expected {persistence.FORMAT_VERSION})')
    class_name, state = meta.get('class_name'), meta.get('state')
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise NetworkPickleError('persistent object: meta needs a str class_name and a dict state')
    return PersistentRecord(class_name, state, meta.get('module_src'))


# ----------------------------------------------------------------------------
# Allow-listed globals. Each entry is either the object itself (harmless by construction) or a
# wrapper that validates its arguments.


def _load_storage_blob(data):
    """torch.storage._load_from_bytes replacement: the blob is a legacy torch.save file; read it safely."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError('torch.storage._load_from_bytes: expected bytes')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # TypedStorage deprecation notice
        storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location='cpu')
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f'torch.storage._load_from_bytes: blob holds a {type(storage).__name__}, '
                                f'not a storage')
    return storage


_NUMERIC_KINDS = set('biufc')  # bool, int, uint, float, complex


def _numpy_dtype(spec, align=False, copy=True):
    """numpy.dtype restricted to plain numeric dtypes (no object or structured dtypes)."""
    if not isinstance(spec, str):
        raise UnsafePickleError(f'numpy.dtype: only dtype strings are allowed, got {type(spec).__name__}')
    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None:
        raise UnsafePickleError(f'numpy.dtype: {spec!r} is not a plain numeric dtype')
    return dtype


def _numpy_scalar(dtype, data=None):
    """numpy.core.multiarray.scalar for numeric dtypes: rebuilds e.g. a float64 weight_gain from its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise UnsafePickleError('numpy scalar: only plain numeric dtypes are allowed')
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise UnsafePickleError('numpy scalar: malformed data')
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _codecs_encode(text, encoding='latin1'):
    """Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); allow only that."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise UnsafePickleError('_codecs.encode: only latin1 text is allowed')
    return codecs.encode(text, encoding)


def _rebuild_from_persistent_meta(meta):
    return _record_from_meta(meta)


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('__builtin__', 'set'): set,
    ('__builtin__', 'frozenset'): frozenset,
    ('_codecs', 'encode'): _codecs_encode,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): torch._utils._rebuild_parameter_with_state,
    ('torch.storage', '_load_from_bytes'): _load_storage_blob,
    ('torch', 'Size'): torch.Size,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy', 'dtype'): _numpy_dtype,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _rebuild_from_persistent_meta,
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}


class _SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only allow-listed globals (see module docstring)."""

    def find_class(self, module, name):
        if (module, name) == ('dnnlib.tflib.network', 'Network'):
            raise NetworkPickleError('this is a TensorFlow-era StyleGAN/StyleGAN2 pickle '
                                     '(dnnlib.tflib.network.Network); it is not supported: convert it to a '
                                     'PyTorch pickle first with NVIDIA\'s stylegan2-ada-pytorch legacy.py '
                                     '(in a trusted environment)')
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is not None:
            return obj
        if module == 'torch' and name in _TORCH_DTYPES:
            return getattr(torch, name)
        raise UnsafePickleError(f'refusing to load global {module}.{name}: not on the allow-list of network '
                                f'pickle contents (the file may be malicious, or from an unsupported tool)')

    def persistent_load(self, pid):
        raise UnsafePickleError('refusing persistent id in network pickle (not a network pickle format)')


def safe_load(file):
    """Unpickle `file` with the allow-list; persistent objects come back as PersistentRecord.

    Args:
        file: binary file object.

    Returns:
        The unpickled object.
    """
    return _SafeUnpickler(file).load()


# ----------------------------------------------------------------------------
# Building our modules from records.


def _class_for(class_name):
    """Our persistent class of this name (networks always; AugmentPipe imported on demand)."""
    from training import networks  # noqa: F401  (registers the network classes)
    if class_name == 'AugmentPipe' and class_name not in persistence.registry:
        try:
            from training import augment  # noqa: F401
        except ImportError as e:
            raise NetworkPickleError(f'cannot build AugmentPipe: training.augment is unavailable ({e})') from e
    cls = persistence.registry.get(class_name)
    if cls is None:
        raise NetworkPickleError(f'unknown network class {class_name!r} in pickle (we can build: '
                                 f'{", ".join(sorted(persistence.registry))})')
    return cls


def record_tensors(record, prefix=''):
    """Every tensor of a record tree by dotted name: {name: tensor} (parameters and buffers).

    Args:
        record: PersistentRecord.
        prefix: prefix for the names (used in recursion).

    Returns:
        dict name -> tensor, in parameters-then-buffers order per module.
    """
    state = record.state
    out = {}
    for slot in ('_parameters', '_buffers'):
        for name, tensor in (state.get(slot) or {}).items():
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise NetworkPickleError(f'{prefix}{name}: expected a tensor, got {type(tensor).__name__}')
            out[prefix + name] = tensor
    for name, child in (state.get('_modules') or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise NetworkPickleError(f'{prefix}{name}: submodule of unsupported type {type(child).__name__}')
        out.update(record_tensors(child, prefix=f'{prefix}{name}.'))
    return out


def _force_fp16_kwargs(class_name, kwargs):
    """Upstream's --force-fp16 (fact sheet 8.3): top 4 resolutions in fp16, activations clamped at 256."""
    kwargs = dnnlib.EasyDict(kwargs)
    if class_name == 'Generator':
        kwargs.synthesis_kwargs = dnnlib.EasyDict(kwargs.get('synthesis_kwargs', {}), num_fp16_res=4, conv_clamp=256)
    elif class_name == 'Discriminator':
        kwargs.num_fp16_res = 4
        kwargs.conv_clamp = 256
    return kwargs


def _copy_tensors(module, tensors, what):
    """Copy `tensors` into `module` by name; every name must match exactly, with equal shapes."""
    dst = dict(misc.named_params_and_buffers(module))
    missing = [name for name in dst if name not in tensors]
    unexpected = [name for name in tensors if name not in dst]
    if missing:
        raise NetworkPickleError(f'{what}: tensor(s) missing from the pickle: {", ".join(missing)}')
    if unexpected:
        raise NetworkPickleError(f'{what}: unexpected tensor(s) in the pickle: {", ".join(unexpected)}')
    with torch.no_grad():
        for name, tensor in dst.items():
            src = tensors[name]
            if tuple(src.shape) != tuple(tensor.shape):
                raise NetworkPickleError(f'{what}: tensor {name} has shape {list(src.shape)} in the pickle, '
                                         f'but the network built from its arguments needs {list(tensor.shape)}')
            tensor.copy_(src.detach())
            if isinstance(tensor, torch.nn.Parameter):
                tensor.requires_grad_(bool(src.requires_grad))


def build_module(record, what='network', force_fp16=False):
    """Construct our module for a PersistentRecord and load its tensors.

    Args:
        record: PersistentRecord of a top-level network (Generator, Discriminator, AugmentPipe, ...).
        what: label for error messages (e.g. 'G_ema').
        force_fp16: apply upstream's force_fp16 overrides to Generator/Discriminator arguments.

    Returns:
        The module, in the record's train/eval mode, with requires_grad as pickled.
    """
    cls = _class_for(record.class_name)
    args = record.init_args
    kwargs = record.init_kwargs
    if force_fp16:
        kwargs = _force_fp16_kwargs(record.class_name, kwargs)
    try:
        module = cls(*args, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise NetworkPickleError(f'{what}: cannot build {record.class_name} from the pickled constructor '
                                 f'arguments {args} {dict(kwargs)}: {e}') from e
    _copy_tensors(module, record_tensors(record), f'{what} ({record.class_name})')
    module.train(bool(record.state.get('training', False)))
    return module


# ----------------------------------------------------------------------------
# Public API.


def resolve_resume(name_or_path):
    """A RESUME_SPECS name ('ffhq512', ...) -> its URL; anything else is returned unchanged."""
    return RESUME_SPECS.get(name_or_path, name_or_path)


def _open(f_or_path_or_url):
    if hasattr(f_or_path_or_url, 'read'):
        return f_or_path_or_url, False
    path = os.fspath(f_or_path_or_url)
    if path in RESUME_SPECS and not os.path.exists(path):
        path = RESUME_SPECS[path]
    return open(dnnlib.util.resolve_path_or_url(path), 'rb'), True


def load_network_pkl(f_or_path_or_url, force_fp16=False):
    """Load a stylegan2-ada-pytorch network pickle (NVIDIA's or ours) without executing code from it.

    Args:
        f_or_path_or_url: binary file object, local path, file:// or http(s) URL (downloaded into the
            dnnlib cache), or a RESUME_SPECS name.
        force_fp16: rebuild G, D and G_ema with num_fp16_res=4 and conv_clamp=256 (as upstream).

    Returns:
        dict(G, D, G_ema, augment_pipe, training_set_kwargs) plus any extra plain entries of the pickle
        (e.g. our snapshots' cur_nimg). Modules are on the CPU; absent entries are None.

    Raises:
        UnsafePickleError: the pickle references a global outside the allow-list.
        NetworkPickleError: TF-era pickle, unknown class, unbuildable arguments, or a missing /
            unexpected / mis-shaped tensor (the message names it).
    """
    f, should_close = _open(f_or_path_or_url)
    try:
        data = safe_load(f)
    finally:
        if should_close:
            f.close()

    if isinstance(data, tuple):
        raise NetworkPickleError('this pickle holds a tuple of networks (TensorFlow-era layout); not supported')
    if not isinstance(data, dict):
        raise NetworkPickleError(f'expected a dict of networks, got {type(data).__name__}')

    result = dict()
    for key in SNAPSHOT_KEYS:
        result[key] = data.get(key)
    for key, value in data.items():
        if key not in result:
            if isinstance(value, PersistentRecord):
                raise NetworkPickleError(f'unexpected network {key!r} in pickle')
            result[key] = value

    for key in _MODULE_KEYS:
        value = result[key]
        if value is None:
            continue
        if not isinstance(value, PersistentRecord):
            raise NetworkPickleError(f'{key}: expected a network, got {type(value).__name__}')
        fp16 = force_fp16 and key in ('G', 'D', 'G_ema')
        result[key] = build_module(value, what=key, force_fp16=fp16)

    tsk = result['training_set_kwargs']
    if tsk is not None and not isinstance(tsk, dict):
        raise NetworkPickleError(f'training_set_kwargs: expected a dict, got {type(tsk).__name__}')
    return result


def save_network_pkl(path, snapshot_dict):
    """Write a network snapshot in upstream's format (atomically).

    Args:
        path: destination .pkl path.
        snapshot_dict: dict with any of training_set_kwargs, G, D, G_ema, augment_pipe (absent -> None;
            modules must be persistent) plus optional plain extras (int/float/str/bool/None, e.g. cur_nimg).
            Modules are pickled as given: pass CPU copies in eval mode (the training loop does).
    """
    data = dict()
    tsk = snapshot_dict.get('training_set_kwargs')
    data['training_set_kwargs'] = dict(tsk) if tsk is not None else None  # plain dict, as upstream
    for key in _MODULE_KEYS:
        module = snapshot_dict.get(key)
        if module is not None and not persistence.is_persistent(module):
            raise TypeError(f'{key}: {type(module).__name__} is not a persistent class')
        data[key] = module
    for key, value in snapshot_dict.items():
        if key in data:
            continue
        if not isinstance(value, (int, float, str, bool, type(None))):
            raise TypeError(f'{key}: only plain values can be stored beside the networks, got {type(value).__name__}')
        data[key] = value
    with dnnlib.util.atomic_open(path, 'wb') as f:
        pickle.dump(data, f, protocol=_PICKLE_PROTOCOL)
