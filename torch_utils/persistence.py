"""Persistent classes: modules that remember their constructor arguments and pickle in NVIDIA's format.

`@persistent_class` does three things to a class:

1. records deep copies of the positional and keyword constructor arguments (`obj.init_args`,
   `obj.init_kwargs`), so a network can be rebuilt from its pickle without running any code from it;
2. registers the class by name in `registry` (class_name -> class);
3. pickles instances in stylegan2-ada-pytorch's persistent-object format: the
   reduce value is `(torch_utils.persistence._reconstruct_persistent_obj, (meta,), None)` with
   `meta = dict(type='class', version=6, module_src=<source of the defining module>,
   class_name=<name>, state=<the object's __dict__>)`, so upstream tools can read our snapshots.

Trust boundary: upstream's `_reconstruct_persistent_obj` exec()s `module_src`, i.e. loading a pickle
runs code stored in it. Ours never does: it looks `class_name` up in `registry` and restores the state
into our own class. Plain `pickle.load` of a file still resolves whatever globals the file names, so the
supported way to load network pickles is `patches.network_pickle.load_network_pkl`, which refuses
every global outside an allow-list before anything is built.
"""

import copy
import functools
import inspect
import sys

import dnnlib

FORMAT_VERSION = 6   # upstream's meta['version']; asserted on load

registry = dict()    # class name -> decorated class
_decorated = set()   # the decorated classes themselves (for is_persistent)
_module_src_cache = dict()  # module name -> source text (read once per module)


def _module_source(module_name):
    """Full source text of a module, or None when it has no source file (e.g. an interactive session)."""
    if module_name not in _module_src_cache:
        try:
            _module_src_cache[module_name] = inspect.getsource(sys.modules[module_name])
        except (OSError, TypeError, KeyError):
            _module_src_cache[module_name] = None
    return _module_src_cache[module_name]


def persistent_class(cls):
    """Class decorator: record constructor args, register by name, pickle in upstream's format.

    Args:
        cls: The class to decorate (typically a torch.nn.Module subclass). It is modified in place
            and returned, so `registry[name] is cls` and isinstance checks are unaffected.

    Returns:
        cls.

    Raises:
        ValueError if another module already registered a persistent class of the same name (pickles
        refer to classes by bare name, so names must be unique).
    """
    assert isinstance(cls, type)
    if cls in _decorated:
        return cls
    name = cls.__name__
    previous = registry.get(name)
    if previous is not None and (previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f'persistent class name {name!r} is used by both {previous.__module__} and {cls.__module__}')

    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        # Only the outermost constructor records: a persistent subclass calling a persistent base's
        # __init__ must not overwrite its own arguments with the base's.
        if '_init_args' not in self.__dict__:
            object.__setattr__(self, '_init_args', copy.deepcopy(args))
            object.__setattr__(self, '_init_kwargs', copy.deepcopy(kwargs))
        original_init(self, *args, **kwargs)

    def __reduce__(self):
        meta = dict(type='class', version=FORMAT_VERSION, module_src=_module_source(type(self).__module__),
                    class_name=type(self).__name__, state=dict(self.__dict__))
        return (_reconstruct_persistent_obj, (meta,), None)

    cls.__init__ = __init__
    cls.__reduce__ = __reduce__
    cls.init_args = property(lambda self: copy.deepcopy(self.__dict__.get('_init_args', ())))
    cls.init_kwargs = property(lambda self: dnnlib.EasyDict(copy.deepcopy(self.__dict__.get('_init_kwargs', {}))))
    registry[name] = cls
    _decorated.add(cls)
    return cls


def is_persistent(obj):
    """True if `obj` is a persistent class or an instance of one."""
    cls = obj if isinstance(obj, type) else type(obj)
    return cls in _decorated


def _reconstruct_persistent_obj(meta):
    """Rebuild a persistent object from its meta dict, WITHOUT executing meta['module_src'].

    This is what plain pickle.load / copy.deepcopy call. The class comes from `registry` by name;
    the object is created with __new__ (no constructor call) and its state restored.

    Args:
        meta: dict(type='class', version=6, module_src=..., class_name=..., state=...).

    Returns:
        The rebuilt object.

    Raises:
        ValueError for an unknown format version, type or class name.
    """
    if meta.get('type') != 'class':
        raise ValueError(f'unsupported persistent object type {meta.get("type")!r}')
    if meta.get('version') != FORMAT_VERSION:
        raise ValueError(f'unsupported persistent object version {meta.get("version")!r} (need {FORMAT_VERSION})')
    class_name = meta.get('class_name')
    cls = registry.get(class_name)
    if cls is None:
        raise ValueError(f'unknown persistent class {class_name!r}: not one of ours '
                         f'(known: {", ".join(sorted(registry)) or "none imported"})')
    obj = cls.__new__(cls)
    state = meta['state']
    if hasattr(obj, '__setstate__'):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)
    return obj
