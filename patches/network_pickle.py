"""Load NVIDIA's stylegan2-ada-pytorch network pickles (and our snapshots) without running code from them.

Upstream loads `network-snapshot-*.pkl` with plain `pickle.load`, and every network object in it is
rebuilt by exec()'ing the Python source stored inside the pickle: opening a downloaded pickle runs
whatever code it carries. This module reads the same files as hostile input:

1. `_SafeUnpickler` (the pure-Python unpickler, so that opcodes can be checked) resolves only an
   allow-list of globals (containers, torch's tensor rebuild functions, numpy scalars/dtypes, EasyDict,
   the persistent-object hook), each wrapped to validate its arguments. Any other global (os.system,
   builtins.eval, an arbitrary class, ...) raises `UnsafePickleError` naming it, before anything is
   called. BUILD (set an object's state) is accepted only on numpy dtype instances, never on a class,
   function or module; protocol-5 buffer opcodes are refused.
2. Tensor storages are embedded legacy `torch.save` blobs, read with `torch.load(weights_only=True)`;
   a tensor view must fit inside its storage (torch would otherwise grow the storage to any size).
3. Each persistent object becomes an inert `PersistentRecord`; its `module_src` is kept as text and
   never executed.
4. Before anything is built, every non-tensor value is checked to be bounded plain data, every
   recorded constructor argument against a range (patches/pickle_rules.py), the weights the arguments
   describe against the tensors present, and every tensor's dtype and values (non-finite values are
   refused unless `allow_nonfinite=True`).
5. `load_network_pkl` then builds OUR class of the same name (looked up in `torch_utils.persistence.
   registry`: callers import training.networks / training.augment first) and copies every tensor by
   name with `misc.copy_params_and_buffers(strict=True)`.

Every refusal is a one-line `NetworkPickleError` (or its subclass `UnsafePickleError`). TensorFlow-era
pickles (dnnlib.tflib.network.Network) are refused: converting them is not supported.
"""

import codecs
import collections
import inspect
import io
import mmap
import os
import pickle
import warnings

import numpy as np
import torch

import dnnlib
from patches import pickle_rules
from patches.pickle_rules import PickleContentError, short
from torch_utils import misc
from torch_utils import persistence

# Transfer-learning source networks published with stylegan2-ada-pytorch: the one table of these names.
_CDN = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets'
RESUME_SPECS = {
    'ffhq256':     f'{_CDN}/ffhq-res256-mirror-paper256-noaug.pkl',
    'ffhq512':     f'{_CDN}/ffhq-res512-mirror-stylegan2-noaug.pkl',
    'ffhq1024':    f'{_CDN}/ffhq-res1024-mirror-stylegan2-noaug.pkl',
    'celebahq256': f'{_CDN}/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl',
    'lsundog256':  f'{_CDN}/lsundog-res256-paper256-kimg100000-noaug.pkl',
}

SNAPSHOT_KEYS = ('training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe')  # upstream's key order
_MODULE_KEYS = ('G', 'D', 'G_ema', 'augment_pipe')
_PICKLE_PROTOCOL = 4  # readable by the Python 3.7+ environments upstream tools run in
_MAX_RECORDS = 10_000       # persistent objects in one network (FFHQ-1024 G has a few hundred)
_MAX_RECORD_DEPTH = 16      # nesting of submodules
_MAX_TENSORS_PER_MODULE = 1000
_MAX_NDIM = 16


class NetworkPickleError(ValueError):
    """The file is not a network pickle we can build, or holds something refused (one-line message)."""


class UnsafePickleError(NetworkPickleError, pickle.UnpicklingError):
    """The pickle names a global or an operation outside the allow-list (nothing from it was executed)."""


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
        raise NetworkPickleError(f'persistent object: unsupported type {short(meta.get("type"))}')
    class_name, state = meta.get('class_name'), meta.get('state')
    if meta.get('version') != persistence.FORMAT_VERSION:
        raise NetworkPickleError(f'persistent object {short(class_name)}: unsupported format version '
                                 f'{short(meta.get("version"))} (expected {persistence.FORMAT_VERSION})')
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise NetworkPickleError('persistent object: meta needs a str class_name and a dict state')
    module_src = meta.get('module_src')
    if module_src is not None and not isinstance(module_src, str):
        raise NetworkPickleError(f'persistent object {short(class_name)}: module_src is not text')
    return PersistentRecord(class_name, state, module_src)


# ----------------------------------------------------------------------------
# Allow-listed globals. Each entry is either the object itself (harmless by construction) or a
# wrapper that validates its arguments.


def _load_storage_blob(data):
    """torch.storage._load_from_bytes replacement: the blob is a legacy torch.save file; read it safely."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError('torch.storage._load_from_bytes: expected bytes')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)  # TypedStorage deprecation notice
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location='cpu')
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f'tensor storage refused by torch\'s weights-only loader: {_first_line(e)}') from None
    except Exception as e:  # malformed blob: torch raises RuntimeError, EOFError, ...
        raise NetworkPickleError(f'damaged tensor storage ({type(e).__name__}: {_first_line(e)})') from None
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f'torch.storage._load_from_bytes: blob holds a {type(storage).__name__}, '
                                f'not a typed storage')
    return storage


def _first_line(exc, limit=160):
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    # torch's weights-only refusal explains itself at length; the line naming the global is the one to keep.
    text = next((line.strip() for line in lines if 'Unsupported global' in line), lines[0])
    return text if len(text) <= limit else text[:limit] + '...'


def _check_view(storage, offset, size, stride):
    """Refuse a tensor view that does not fit its storage (torch would silently grow the storage)."""
    ints = lambda seq: isinstance(seq, (tuple, list)) and all(type(v) is int for v in seq)  # noqa: E731
    if not (ints(size) and ints(stride) and type(offset) is int) or len(size) != len(stride) or len(size) > _MAX_NDIM:
        raise UnsafePickleError('tensor: malformed size/stride/offset')
    if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise UnsafePickleError('tensor: negative size, stride or offset')
    numel = int(np.prod(size, dtype=object)) if size else 1
    if numel == 0:
        return
    extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # TypedStorage deprecation notice
        available = storage.size()
    if extent > available or numel > available:
        raise UnsafePickleError(f'tensor of shape {list(size)[:8]} does not fit its storage of {available} elements')


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 for plain tensors that fit their storage (no hooks, no metadata)."""
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError('tensor: storage is not a tensor storage')
    if backward_hooks or metadata or not isinstance(requires_grad, bool):
        raise UnsafePickleError('tensor: hooks, metadata or a non-bool requires_grad are refused')
    _check_view(storage, storage_offset, tuple(size) if isinstance(size, torch.Size) else size, stride)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), requires_grad,
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """torch._utils._rebuild_parameter(_with_state) without hooks or extra attribute state."""
    if not isinstance(data, torch.Tensor) or isinstance(data, torch.nn.Parameter):
        raise UnsafePickleError('parameter: data is not a plain tensor')
    if backward_hooks or state or not isinstance(requires_grad, bool):
        raise UnsafePickleError('parameter: hooks, attribute state or a non-bool requires_grad are refused')
    return torch.nn.Parameter(data, requires_grad)


def _torch_size(dims=()):
    if not isinstance(dims, (tuple, list)) or len(dims) > _MAX_NDIM or not all(type(d) is int and d >= 0 for d in dims):
        raise UnsafePickleError('torch.Size: expected a short list of non-negative ints')
    return torch.Size(dims)


_NUMERIC_KINDS = set('biufc')  # bool, int, uint, float, complex


def _numpy_dtype(spec, align=False, copy=True):
    """numpy.dtype restricted to plain numeric dtypes (no object or structured dtypes)."""
    if not isinstance(spec, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        raise UnsafePickleError('numpy.dtype: only dtype strings are allowed')
    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype:
        raise UnsafePickleError(f'numpy.dtype: {short(spec)} is not a plain numeric dtype')
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


def _container(kind):
    """set/frozenset/OrderedDict of a list of items (refuses anything but a list, tuple or dict)."""
    def build(items=()):
        if not isinstance(items, (list, tuple, dict)):
            raise UnsafePickleError(f'{kind.__name__}: expected a list of items, got {type(items).__name__}')
        return kind(items)
    build.__name__ = kind.__name__
    return build


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,  # needed as a class by NEWOBJ; takes no code
    ('builtins', 'set'): _container(set),
    ('builtins', 'frozenset'): _container(frozenset),
    ('__builtin__', 'set'): _container(set),
    ('__builtin__', 'frozenset'): _container(frozenset),
    ('_codecs', 'encode'): _codecs_encode,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage_blob,
    ('torch', 'Size'): _torch_size,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy', 'dtype'): _numpy_dtype,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _record_from_meta,
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}


def _describe(obj):
    if isinstance(obj, type):
        return f'the class {obj.__name__}'
    if callable(obj):
        return f'the function {getattr(obj, "__name__", "?")}'
    return f'a {type(obj).__name__}'


class _SafeUnpickler(pickle._Unpickler):
    """Pure-Python pickle.Unpickler with an allow-list of globals and checked opcodes (module docstring)."""

    dispatch = dict(pickle._Unpickler.dispatch)

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
        raise UnsafePickleError(f'refusing to load global {short(module, 80)[1:-1]}.{short(name, 80)[1:-1]}: not '
                                f'on the allow-list of network pickle contents (the file may be malicious, or '
                                f'from an unsupported tool)')

    def persistent_load(self, pid):
        raise UnsafePickleError('refusing persistent id in network pickle (not a network pickle format; '
                                'a torch.save file?)')

    def load_build(self):
        # BUILD sets state on the object below it. Allowed only on numpy dtypes (their pickled form);
        # on a class, function or module it would change them for the whole process.
        state, inst = self.stack[-1], self.stack[-2]
        if not isinstance(inst, np.dtype):
            raise UnsafePickleError(f'refusing to set state (BUILD) on {_describe(inst)}')
        if not isinstance(state, tuple) or len(state) > 16 or not all(
                isinstance(v, (type(None), bool, int, str)) for v in state):
            raise UnsafePickleError('numpy dtype: malformed state')
        super().load_build()

    def refuse_buffer(self):
        raise UnsafePickleError('refusing protocol-5 buffer opcodes (not used by network pickles)')

    dispatch[pickle.BUILD[0]] = load_build
    for _op in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = refuse_buffer
    del _op


def safe_load(file):
    """Unpickle `file` with the allow-list; persistent objects come back as PersistentRecord.

    Args:
        file: binary file object.

    Returns:
        The unpickled object.

    Raises:
        UnsafePickleError / NetworkPickleError with a one-line message (malformed files included).
    """
    try:
        return _SafeUnpickler(file).load()
    except NetworkPickleError:
        raise
    except EOFError:
        raise NetworkPickleError('the file ends early: truncated, or not a network pickle') from None
    except RecursionError:
        raise NetworkPickleError('not a valid network pickle (nested too deeply)') from None
    except Exception as e:  # any decoder failure on hostile bytes means "not a valid pickle"
        raise NetworkPickleError(f'not a valid network pickle ({type(e).__name__}: {_first_line(e, 100)})') from None


_LEGACY_TORCH_SAVE = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'  # its magic number


def _sniff(head):
    """A one-line reason when the first bytes show the file is no pickle at all, else None."""
    if not head:
        return 'the file is empty'
    if head.startswith(_LEGACY_TORCH_SAVE):
        return 'the file is a torch.save checkpoint (legacy format), not a network pickle'
    if head.startswith(b'PK\x03\x04') or head.startswith(b'PK\x05\x06'):
        return ('the file is a zip archive (a torch.save checkpoint or a dataset?), not a network pickle')
    if head.startswith(b'\x80') and (len(head) < 2 or head[1] > pickle.HIGHEST_PROTOCOL):
        return 'the file is not a pickle this Python can read (unknown protocol)'
    if not head.startswith(b'\x80') and head[:1] not in b'(}]cI':
        return 'the file is not a pickle (text or another format?)'
    return None


# ----------------------------------------------------------------------------
# Checking records before anything is built.


def _class_for(class_name):
    """Our persistent class of this name, from torch_utils.persistence.registry."""
    cls = persistence.registry.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        known = ', '.join(sorted(persistence.registry)) or 'none imported: import training.networks first'
        raise NetworkPickleError(f'unknown network class {short(class_name)} in pickle (we can build: {known})')
    return cls


def _check_record_tree(record, what):
    """The record tree is bounded: depth, number of records, tensors per module, and slot types."""
    stack, count = [(record, what, 0)], 0
    while stack:
        rec, where, depth = stack.pop()
        count += 1
        if count > _MAX_RECORDS or depth > _MAX_RECORD_DEPTH:
            raise NetworkPickleError(f'{what}: more than {_MAX_RECORDS} submodules or nested deeper than '
                                     f'{_MAX_RECORD_DEPTH} levels')
        state = rec.state
        if not isinstance(state.get('training', False), bool):
            raise NetworkPickleError(f'{where}: "training" must be True or False')
        for slot in ('_parameters', '_buffers', '_modules'):
            items = state.get(slot) or {}
            if not isinstance(items, dict) or len(items) > _MAX_TENSORS_PER_MODULE:
                raise NetworkPickleError(f'{where}: {slot} must be a dict of at most {_MAX_TENSORS_PER_MODULE} entries')
            for name in items:
                if not isinstance(name, str) or not name.isidentifier():
                    raise NetworkPickleError(f'{where}: {slot} has a bad name {short(name)}')
        for name, child in (state.get('_modules') or {}).items():
            if child is not None:
                if not isinstance(child, PersistentRecord):
                    raise NetworkPickleError(f'{where}.{name}: submodule of unsupported type {type(child).__name__}')
                stack.append((child, f'{where}.{name}', depth + 1))


def record_tensors(record, prefix=''):
    """Every tensor of a record tree by dotted name: {name: tensor} (parameters and buffers).

    Args:
        record: PersistentRecord (its tree already bounded by _check_record_tree).
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
        if child is not None:
            out.update(record_tensors(child, prefix=f'{prefix}{name}.'))
    return out


def _bound_args(cls, record, what):
    """The record's constructor arguments, checked as plain bounded data and bound to parameter names."""
    args, kwargs = record.state.get('_init_args', ()), record.state.get('_init_kwargs', {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise NetworkPickleError(f'{what}: cannot build {cls.__name__}: malformed constructor arguments')
    try:
        pickle_rules.check_plain(list(args), 'positional arguments')
        pickle_rules.check_plain(kwargs, 'keyword arguments')
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except (PickleContentError, TypeError) as e:
        raise NetworkPickleError(f'{what}: cannot build {cls.__name__}: {_first_line(e)}') from None
    bound = dict(bound.arguments)
    bound.pop(next(iter(bound)))  # self
    return bound


def _flatten_var_keyword(cls, bound):
    """Undo bind()'s packing of a `**kwargs` parameter, so the constructor gets the names it was pickled with."""
    params = inspect.signature(cls.__init__).parameters
    flat = dict(bound)
    for name, param in params.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in flat:
            flat.update(flat.pop(name))
    return flat


def _check_tensor_values(tensors, what, allow_nonfinite):
    for name, tensor in tensors.items():
        if tensor.dtype.is_complex:
            raise NetworkPickleError(f'{what}: tensor {name} is complex ({tensor.dtype}); the imaginary part '
                                     f'would be dropped')
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            if not allow_nonfinite:
                raise NetworkPickleError(f'{what}: tensor {name} holds NaN or inf values (pass '
                                         f'allow_nonfinite=True to load it anyway)')
            warnings.warn(f'{what}: tensor {name} holds NaN or inf values; loaded because allow_nonfinite=True',
                          stacklevel=3)


def check_record(record, what='network', allow_nonfinite=False):
    """Everything about a top-level record that can be checked without building it.

    Returns:
        (cls, bound constructor arguments, {name: tensor}).
    """
    _check_record_tree(record, what)
    cls = _class_for(record.class_name)
    bound = _bound_args(cls, record, what)
    try:
        pickle_rules.check_init_args(bound)
    except PickleContentError as e:
        raise NetworkPickleError(f'{what}: cannot build {cls.__name__}: {e}') from None
    tensors = record_tensors(record)
    present = sum(t.numel() for t in tensors.values())
    described = pickle_rules.estimate_num_params(record.class_name, bound)
    if described > 2 * present + 65536:  # honest pickles hold more than the weight-only estimate
        raise NetworkPickleError(f'{what}: cannot build {cls.__name__}: its constructor arguments describe about '
                                 f'{described:,} weights, but the pickle holds only {present:,} tensor values')
    _check_tensor_values(tensors, what, allow_nonfinite)
    return cls, bound, tensors


# ----------------------------------------------------------------------------
# Building our modules from records.


def _force_fp16_kwargs(class_name, kwargs):
    """Upstream's --force-fp16: top 4 resolutions in fp16, activations clamped at 256."""
    kwargs = dnnlib.EasyDict(kwargs)
    if class_name == 'Generator':
        kwargs.synthesis_kwargs = dnnlib.EasyDict(kwargs.get('synthesis_kwargs', {}), num_fp16_res=4, conv_clamp=256)
    elif class_name == 'Discriminator':
        kwargs.num_fp16_res = 4
        kwargs.conv_clamp = 256
    return kwargs


def build_module(record, what='network', force_fp16=False, allow_nonfinite=False, checked=None):
    """Construct our module for a PersistentRecord and load its tensors.

    Args:
        record: PersistentRecord of a top-level network (Generator, Discriminator, AugmentPipe, ...).
        what: label for error messages (e.g. 'G_ema').
        force_fp16: apply upstream's force_fp16 overrides to Generator/Discriminator arguments.
        allow_nonfinite: load tensors holding NaN/inf (with a warning) instead of refusing them.
        checked: check_record's result, when the caller already has it.

    Returns:
        The module, in the record's train/eval mode, with requires_grad as pickled.
    """
    cls, bound, tensors = checked or check_record(record, what, allow_nonfinite)
    kwargs = dnnlib.EasyDict(_flatten_var_keyword(cls, bound))
    if force_fp16:
        kwargs = _force_fp16_kwargs(record.class_name, kwargs)
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise NetworkPickleError(f'{what}: cannot build {cls.__name__} from the pickled constructor '
                                 f'arguments: {_first_line(e)}') from None
    try:
        misc.copy_params_and_buffers(tensors, module, strict=True)
    except ValueError as e:
        raise NetworkPickleError(f'{what} ({cls.__name__}): {_first_line(e, 300)}') from None
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.requires_grad_(bool(tensors[name].requires_grad))
    module.train(bool(record.state.get('training', False)))
    return module


# ----------------------------------------------------------------------------
# Public API.


def resolve_resume(name_or_path):
    """A RESUME_SPECS name ('ffhq512', ...) -> its URL; anything else is returned unchanged."""
    return RESUME_SPECS.get(name_or_path, name_or_path)


def _read(f_or_path_or_url):
    """Unpickle a file object, path, URL or RESUME_SPECS name with safe_load (sniffing non-pickles first)."""
    if hasattr(f_or_path_or_url, 'read'):
        return _load_bytes_like(io.BytesIO(f_or_path_or_url.read()))
    path = os.fspath(f_or_path_or_url)
    if path in RESUME_SPECS and not os.path.exists(path):
        path = RESUME_SPECS[path]
    with open(dnnlib.util.resolve_path_or_url(path), 'rb') as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise NetworkPickleError('the file is empty')
        # mmap: reads past the end return short instead of allocating what a header claims.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _load_bytes_like(m)


def _load_bytes_like(buf):
    reason = _sniff(buf.read(len(_LEGACY_TORCH_SAVE)))
    if reason:
        raise NetworkPickleError(reason)
    buf.seek(0)
    return safe_load(buf)


def _split_entries(data):
    """Top-level dict -> result dict (SNAPSHOT_KEYS first), every non-network value checked as plain data."""
    if isinstance(data, tuple):
        raise NetworkPickleError('this pickle holds a tuple of networks (TensorFlow-era layout); not supported')
    if not isinstance(data, dict):
        raise NetworkPickleError(f'expected a dict of networks, got {type(data).__name__}')
    if len(data) > 64 or not all(isinstance(k, str) for k in data):
        raise NetworkPickleError('expected a dict of networks with a few str keys')
    result = {key: data.get(key) for key in SNAPSHOT_KEYS}
    for key, value in data.items():
        if key not in result:
            if isinstance(value, PersistentRecord):
                raise NetworkPickleError(f'unexpected network {short(key)} in pickle')
            result[key] = value
    for key, value in result.items():
        if key in _MODULE_KEYS:
            if value is not None and not isinstance(value, PersistentRecord):
                raise NetworkPickleError(f'{key}: expected a network, got {type(value).__name__}')
            continue
        try:
            pickle_rules.check_plain(value, short(key)[1:-1])
        except PickleContentError as e:
            raise NetworkPickleError(str(e)) from None
    if all(result[key] is None for key in _MODULE_KEYS):
        raise NetworkPickleError('the pickle holds no networks (G, D, G_ema or augment_pipe)')
    tsk = result['training_set_kwargs']
    if tsk is not None and not isinstance(tsk, dict):
        raise NetworkPickleError(f'training_set_kwargs: expected a dict, got {type(tsk).__name__}')
    return result


def load_network_pkl(f_or_path_or_url, force_fp16=False, allow_nonfinite=False):
    """Load a stylegan2-ada-pytorch network pickle (NVIDIA's or ours) without executing code from it.

    The network classes must be registered first (import training.networks, and training.augment for
    pickles with an augment pipe). Everything is checked before the first module is built.

    Args:
        f_or_path_or_url: binary file object, local path, file:// or http(s) URL (downloaded into the
            dnnlib cache), or a RESUME_SPECS name.
        force_fp16: rebuild G, D and G_ema with num_fp16_res=4 and conv_clamp=256 (as upstream).
        allow_nonfinite: load tensors holding NaN/inf with a warning instead of refusing the pickle.

    Returns:
        dict(G, D, G_ema, augment_pipe, training_set_kwargs) plus any extra plain entries of the pickle
        (e.g. our snapshots' cur_nimg). Modules are on the CPU; absent entries are None.
        training_set_kwargs is data only: see pickle_rules.check_dataset_kwargs before using it.

    Raises:
        UnsafePickleError: the pickle references a global or operation outside the allow-list.
        NetworkPickleError: anything else refused (one line naming the problem).
        FileNotFoundError / OSError: the file cannot be read.
    """
    result = _split_entries(_read(f_or_path_or_url))
    checked = {key: check_record(result[key], key, allow_nonfinite)
               for key in _MODULE_KEYS if result[key] is not None}
    for key, info in checked.items():
        fp16 = force_fp16 and key in ('G', 'D', 'G_ema')
        result[key] = build_module(result[key], what=key, force_fp16=fp16, checked=info)
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
