"""A corpus of crafted network pickles that the loader must refuse (used by tests and benchmarks).

`build_corpus(sentinel_dir)` returns a list of Case(name, data, pattern): `data` is the file's bytes,
`pattern` a regex the one-line refusal must match. Payloads that would run code write a file into
`sentinel_dir`, so a test can check that nothing ran. `process_fingerprint()` captures process-wide
state that a BUILD opcode could mutate (class attributes, function defaults).
"""

import collections
import copy
import io
import os
import pickle
import shutil
import struct
import subprocess
import warnings
import zipfile

import numpy as np
import torch

import dnnlib
from patches import network_pickle
from torch_utils import persistence
from training import networks

Case = collections.namedtuple('Case', 'name data pattern')


class Reduce:
    """Pickles as `func(*args)`: the shape of every code-running payload."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class Record:
    """Pickles exactly like a persistent object with the given meta (class name, state, ...)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,))


class RecordWithState(Record):
    """A persistent object followed by BUILD: replaces the record's attributes after it is made."""

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,), {'state': {}, 'class_name': 'Generator'})


def tiny_generator():
    torch.manual_seed(0)
    return networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval().requires_grad_(False)


def _meta(module, **init_kwargs_edits):
    """The persistent meta of `module`, with its recorded constructor kwargs edited."""
    meta = module.__reduce__()[1][0]
    kwargs = copy.deepcopy(dict(meta['state']['_init_kwargs']))
    for key, value in init_kwargs_edits.items():
        parent = kwargs
        *path, last = key.split('.')
        for name in path:
            parent = parent.setdefault(name, {})
        parent[last] = value
    meta['state'] = dict(meta['state'], _init_kwargs=kwargs)
    return meta


def snapshot_bytes(G=None, protocol=4, **entries):
    G = tiny_generator() if G is None else G
    data = dict(training_set_kwargs=None, G=G, D=None, G_ema=G, augment_pipe=None)
    data.update(entries)
    return pickle.dumps(data, protocol=protocol)


def _with_kwargs(**edits):
    return pickle.dumps(dict(G_ema=Record(_meta(tiny_generator(), **edits))), protocol=4)


def _with_tensor(slot, module_path, name, tensor):
    G = copy.deepcopy(tiny_generator())
    module = G.get_submodule(module_path)
    getattr(module, slot)[name] = tensor
    return snapshot_bytes(G)


def _self_list():
    bomb = []
    bomb.append(bomb)
    return bomb


def _laughs(levels=30, width=10):
    """A list of `width` references to a list of `width` references ... (width**levels leaves)."""
    value = ['lol']
    for _ in range(levels):
        value = [value] * width
    return value


def _deep_records(depth):
    meta = dict(type='class', version=6, module_src='', class_name='MappingNetwork', state={})
    for _ in range(depth):
        meta = dict(meta, state=dict(_modules={'m': Record(meta)}))
    return meta


# ----------------------------------------------------------------------------
# Hand-assembled opcode streams for what pickle.dumps cannot produce.


def _global(module, name):
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _str(text):
    raw = text.encode()
    return b'X' + struct.pack('<I', len(raw)) + raw


def _build_on(target_opcodes, slot_name, value_opcodes):
    """Protocol-2 stream: push target, BUILD it with slot state {slot_name: value} (setattr on it)."""
    return (b'\x80\x02' + target_opcodes + b'N}' + _str(slot_name) + value_opcodes + b's\x86b.')


def _zip_bytes(**files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _torch_save(obj, zip_format=True):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def build_corpus(sentinel_dir):
    """Every crafted pickle (see module docstring). Names are unique."""
    cases = []
    add = lambda name, data, pattern: cases.append(Case(name, data, pattern))  # noqa: E731
    for make in (_code_cases, _argument_cases, _bomb_cases, _build_cases, _dtype_cases, _file_cases):
        make(add, sentinel_dir)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), 'duplicate case names'
    return cases


def _code_cases(add, sentinel_dir):
    """Code-running globals, every protocol, at top level and hidden inside an otherwise valid snapshot."""
    sentinel = os.path.join(sentinel_dir, 'pwned')
    touch = f'touch {sentinel}'
    pyopen = f'open({sentinel!r}, "w")'
    for protocol in range(6):
        add(f'os.system-p{protocol}', pickle.dumps(Reduce(os.system, (touch,)), protocol=protocol), r'global .*system')
    add('eval', pickle.dumps(Reduce(eval, (pyopen,)), protocol=2), r'global (builtins|__builtin__)\.eval')
    add('exec', pickle.dumps(Reduce(exec, (pyopen,)), protocol=3), r'global builtins\.exec')
    add('popen', pickle.dumps(Reduce(subprocess.Popen, (['touch', sentinel],)), protocol=5), r'subprocess\.Popen')
    add('open', pickle.dumps(Reduce(open, (sentinel, 'w')), protocol=4), r'global (io|builtins)\.open')
    add('rmtree', pickle.dumps(Reduce(shutil.rmtree, (sentinel_dir,)), protocol=4), r'shutil\.rmtree')
    add('torch.load', pickle.dumps(Reduce(torch.load, (sentinel,)), protocol=4), r'torch\.serialization\.load')
    add('torch.hub.load', pickle.dumps(Reduce(torch.hub.load, (sentinel_dir, 'x')), protocol=4), r'torch\.hub\.load')
    add('pickle.loads', pickle.dumps(Reduce(pickle.loads, (b'x',)), protocol=4), r'_pickle\.loads')
    add('construct-by-name', pickle.dumps(Reduce(dnnlib.util.get_obj_by_name, ('os.system',)), protocol=4),
        r'dnnlib\.util\.get_obj_by_name')
    add('class-call', pickle.dumps(Reduce(torch.nn.Linear, (2, 2)), protocol=4), r'torch\.nn\.modules\.linear\.Linear')
    add('copyreg-p0', pickle.dumps(dnnlib.EasyDict(a=1), protocol=0), r'copy_?reg\._reconstructor')
    meta = _meta(tiny_generator())
    meta['state']['evil'] = Reduce(os.system, (touch,))
    add('hidden-in-G-state', pickle.dumps(dict(G=Record(meta)), protocol=3), r'global .*system')
    add('hidden-in-tsk', snapshot_bytes(training_set_kwargs={'path': Reduce(os.system, (touch,))}), r'system')
    add('storage-blob-payload', pickle.dumps(Reduce(torch.storage._load_from_bytes,
                                                    (pickle.dumps(Reduce(os.system, (touch,)), protocol=2),)), 3),
        r'weights-only')


def _argument_cases(add, sentinel_dir):
    """Hostile constructor arguments (the issue's denial-of-service cases first)."""
    add('z_w_dim_30000', _with_kwargs(z_dim=30000, w_dim=30000), r'argument z_dim=30000 must be an integer in')
    add('mapping_layers_1e7', _with_kwargs(**{'mapping_kwargs.num_layers': 10 ** 7}),
        r'argument mapping_kwargs\.num_layers=10000000 must be')
    add('channel_base_1e12', _with_kwargs(**{'synthesis_kwargs.channel_base': 10 ** 12}),
        r'argument synthesis_kwargs\.channel_base')
    add('resolution_not_pow2', _with_kwargs(img_resolution=1000), r'img_resolution=1000 must be a power of two')
    add('resolution_huge', _with_kwargs(img_resolution=1 << 20), r'img_resolution=1048576 must be a power of two')
    add('img_channels_0', _with_kwargs(img_channels=0), r'img_channels=0 must be')
    add('w_dim_negative', _with_kwargs(w_dim=-1), r'w_dim=-1 must be')
    add('c_dim_string', _with_kwargs(c_dim='x'), r"c_dim='x' must be an integer")
    add('z_dim_bool', _with_kwargs(z_dim=True), r'z_dim=True must be an integer')
    add('conv_clamp_nan', _with_kwargs(**{'synthesis_kwargs.conv_clamp': float('nan')}), r'conv_clamp=nan must be')
    add('architecture_evil', _with_kwargs(**{'synthesis_kwargs.architecture': 'os.system'}), r'architecture=.* one of')
    add('filter_long', _with_kwargs(**{'synthesis_kwargs.resample_filter': [1.0] * 100000}),
        r'resample_filter.*(list of 1\.\.16|more than 100000 values)')
    add('unknown_kwarg', _with_kwargs(bogus=1), r'cannot build Generator: .*bogus')
    add('kwargs_not_dict', _with_kwargs(mapping_kwargs=[1, 2]), r'mapping_kwargs must be a dict')
    add('weights_vs_tensors', _with_kwargs(w_dim=4096, z_dim=4096, **{'mapping_kwargs.num_layers': 32}),
        r'describe about [0-9,]+ weights, but the pickle holds only')
    add('channels_vs_tensors', _with_kwargs(**{'synthesis_kwargs.channel_max': 4096,
                                               'synthesis_kwargs.channel_base': 1 << 22}), r'weights, but the pickle')


def _bomb_cases(add, sentinel_dir):
    """Bombs: shared or self-referencing structures, deep nesting, huge declared lengths."""
    add('tsk-self-list', snapshot_bytes(training_set_kwargs={'path': _self_list()}), r'training_set_kwargs')
    add('tsk-laughs', snapshot_bytes(training_set_kwargs={'path': _laughs()}), r'more than 100000 values')
    add('extra-entry-laughs', snapshot_bytes(cur_nimg=_laughs()), r'cur_nimg.*more than 100000 values')
    add('init-kwargs-laughs', _with_kwargs(**{'mapping_kwargs.embed_features': _laughs()}),
        r'more than 100000|nested deeper than')
    add('deep-dict', snapshot_bytes(training_set_kwargs=_deep_dict(200)), r'nested deeper than')
    add('deep-records', pickle.dumps(dict(G=Record(_deep_records(40))), protocol=4), r'nested deeper than 16')
    add('bytearray8', b'\x80\x05\x96' + struct.pack('<Q', 10 ** 10) + b'.', r'protocol-5 buffer')
    add('frame-bomb', b'\x80\x04\x95' + struct.pack('<Q', 1 << 62) + b'}.', r'holds no networks')
    add('unicode8-bomb', b'\x80\x04\x8d' + struct.pack('<Q', 1 << 62) + b'abc.', r'not a valid|ends early')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # TypedStorage deprecation notice
        storage = torch.TypedStorage(4, dtype=torch.float32)
    hooks = collections.OrderedDict()
    add('view-bomb', pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2,
                                         (storage, 0, (100000, 100000), (100000, 1), False, hooks)), 2),
        r'does not fit its storage')
    add('view-broadcast', pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2,
                                              (storage, 0, (10 ** 9,), (0,), False, collections.OrderedDict())), 2),
        r'does not fit its storage')
    add('view-negative', pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2,
                                             (storage, 0, (4,), (-1,), False, collections.OrderedDict())), 2),
        r'negative')


def _build_cases(add, sentinel_dir):
    """BUILD on classes, functions and other objects (would mutate them process-wide)."""
    add('build-easydict-class',
        _build_on(_global('dnnlib.util', 'EasyDict'), '__getattr__', _global('_codecs', 'encode')),
        r'BUILD.*class EasyDict')
    add('build-function-defaults', _build_on(_global('torch._utils', '_rebuild_tensor_v2'), '__defaults__', b')'),
        r'BUILD.*function')
    add('build-ordereddict-class', _build_on(_global('collections', 'OrderedDict'), 'fromkeys', b'N'), r'BUILD.*class')
    add('build-dict-instance', _build_on(_global('collections', 'OrderedDict') + b')R', 'x', b'N'),
        r'BUILD.*OrderedDict')
    add('build-torch-dtype', _build_on(_global('torch', 'float32'), 'is_floating_point', b'N'), r'BUILD')
    add('build-easydict-instance', _build_on(_global('dnnlib.util', 'EasyDict') + b')R', '__class__', b'N'),
        r'BUILD.*EasyDict')
    add('build-record', pickle.dumps(dict(G=RecordWithState(_meta(tiny_generator()))), protocol=4), r'BUILD.*Record')


def _dtype_cases(add, sentinel_dir):
    """Tensor dtypes and values that do not fit the parameter they fill."""
    add('float64-overflow', _with_tensor('_parameters', 'mapping.fc0', 'weight',
                                         torch.full([16, 16], 1e300, dtype=torch.float64)), r'overflow')
    add('int64-param', _with_tensor('_parameters', 'mapping.fc0', 'bias', torch.zeros(16, dtype=torch.int64)),
        r'mapping\.fc0\.bias: dtype torch\.int64 cannot fill')
    add('complex-param',
        _with_tensor('_parameters', 'mapping.fc0', 'weight', torch.zeros(16, 16, dtype=torch.complex64)),
        r'mapping\.fc0\.weight is complex')
    add('bool-param', _with_tensor('_parameters', 'mapping.fc1', 'bias', torch.zeros(16, dtype=torch.bool)),
        r'mapping\.fc1\.bias: dtype torch\.bool')
    add('nan-param', _with_tensor('_parameters', 'mapping.fc0', 'weight', torch.full([16, 16], float('nan'))),
        r'mapping\.fc0\.weight holds NaN or inf')
    add('inf-buffer', _with_tensor('_buffers', 'mapping', 'w_avg', torch.full([16], float('inf'))),
        r'mapping\.w_avg holds NaN or inf')
    add('param-hooks', pickle.dumps(Reduce(torch._utils._rebuild_parameter,
                                           (torch.zeros(2), False, collections.OrderedDict(a=1))), 2), r'hooks')


def _file_cases(add, sentinel_dir):
    """Files that are not network pickles at all."""
    valid = snapshot_bytes()
    add('empty', b'', r'empty')
    add('truncated', valid[:len(valid) // 2], r'ends early|not a valid')
    add('truncated-header', valid[:3], r'ends early|not a valid')
    add('text', b'network weights: see https://example.com\n', r'not a pickle')
    add('dataset-zip', _zip_bytes(**{'00000/img00000000.png': b'x', 'dataset.json': b'{}'}), r'zip archive')
    add('torch.save-zip', _torch_save({'G': torch.zeros(3)}), r'zip archive')
    add('torch.save-legacy', _torch_save({'G': torch.zeros(3)}, zip_format=False), r'torch\.save checkpoint')
    add('gzip', b'\x1f\x8b\x08\x00' + bytes(20), r'not a pickle')
    add('future-protocol', b'\x80\x09}.', r'unknown protocol')
    add('list', pickle.dumps([1, 2, 3]), r'expected a dict of networks')
    add('tensorflow', b'\x80\x03cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01}q\x02b.', r'TensorFlow-era')
    add('unknown-class', pickle.dumps(dict(G=Record(dict(_meta(tiny_generator()), class_name='Evil\nNet' * 50))), 4),
        r'unknown network class')

def _deep_dict(depth):
    value = {}
    for _ in range(depth):
        value = {'a': value}
    return value


def process_fingerprint():
    """Process-wide state a BUILD could change: class dicts and function defaults the allow-list exposes."""
    return dict(
        easydict=dict(vars(dnnlib.EasyDict)),
        ordereddict=dict(vars(collections.OrderedDict)),
        rebuild_defaults=torch._utils._rebuild_tensor_v2.__defaults__,
        wrapper_defaults=network_pickle._rebuild_tensor.__defaults__,
        dtype_attrs=dir(torch.float32),
        numpy_dtype=dict(vars(np.dtype)),
    )
