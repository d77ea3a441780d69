"""Our snapshots load in NVIDIA's own code: a stand-in tree with only their module names.

NVIDIA's loader unpickles `torch_utils.persistence._reconstruct_persistent_obj(meta)`, which executes
the stored `module_src` of each class in a fresh module and rebuilds the object with __new__ and
__setstate__. So every module that source imports, and every function it calls, must exist in
their tree with their signature. The stand-in tree below has exactly their module names
(torch_utils.persistence, misc, ops.upfirdn2d, conv2d_resample, bias_act, fma, conv2d_gradfix,
grid_sample_gradfix, and dnnlib), each a stub exposing only (a subset of) their public API and
implemented by delegating to our reference ops. A default snapshot (networks plus the bgc augment
pipe) is loaded there in a fresh process the way their loader does, and must give the same images
as our own loader.
"""

import ast
import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import dnnlib
from patches import network_pickle
from tests import training_helpers
from training.augment import AugmentPipe, augpipe_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UPSTREAM_MODULES = {
    'torch_utils', 'torch_utils.persistence', 'torch_utils.misc', 'torch_utils.ops', 'torch_utils.ops.upfirdn2d',
    'torch_utils.ops.conv2d_resample', 'torch_utils.ops.bias_act', 'torch_utils.ops.fma',
    'torch_utils.ops.conv2d_gradfix', 'torch_utils.ops.grid_sample_gradfix', 'dnnlib', 'dnnlib.util',
}
THIRD_PARTY_ROOTS = {'torch', 'numpy', 'scipy', 'math', 'statistics', 'copy', 'functools', 'contextlib'}

# Stubs: their module names and signatures, our reference ops underneath (`_reference_ops` is put
# in sys.modules by the loader script before our own tree is hidden).
STUBS = {
    'dnnlib/__init__.py': 'from .util import EasyDict\n',
    'dnnlib/util.py': '''
        class EasyDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError:
                    raise AttributeError(name)
            def __setattr__(self, name, value):
                self[name] = value
            def __delattr__(self, name):
                del self[name]
    ''',
    'torch_utils/__init__.py': '',
    'torch_utils/ops/__init__.py': '',
    'torch_utils/persistence.py': '''
        # The documented behaviour of their loader: exec the stored source, rebuild without __init__.
        import copy, sys, types, uuid
        import dnnlib
        _decorators = set()
        _src_to_module = dict()
        def persistent_class(orig_class):
            if orig_class in _decorators:
                return orig_class
            class Decorated(orig_class):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    self._init_args = copy.deepcopy(args)
                    self._init_kwargs = copy.deepcopy(kwargs)
                @property
                def init_kwargs(self):
                    return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))
            Decorated.__name__ = orig_class.__name__
            Decorated.__qualname__ = orig_class.__qualname__
            Decorated.__module__ = orig_class.__module__
            _decorators.add(Decorated)
            return Decorated
        def is_persistent(obj):
            return (obj if isinstance(obj, type) else type(obj)) in _decorators
        def _module_from_src(src):
            module = _src_to_module.get(src)
            if module is None:
                name = '_imported_module_' + uuid.uuid4().hex
                module = types.ModuleType(name)
                sys.modules[name] = module
                exec(src, module.__dict__)
                _src_to_module[src] = module
            return module
        def _reconstruct_persistent_obj(meta):
            meta = dnnlib.EasyDict(meta)
            assert meta.type == 'class' and meta.version == 6
            module = _module_from_src(meta.module_src)
            cls = persistent_class(module.__dict__[meta.class_name])
            obj = cls.__new__(cls)
            obj.__setstate__(meta.state)
            return obj
    ''',
    'torch_utils/misc.py': '''
        import _reference_ops as _ref
        def constant(value, shape=None, dtype=None, device=None, memory_format=None):
            return _ref.misc.constant(value, shape=shape, dtype=dtype, device=device, memory_format=memory_format)
        def assert_shape(tensor, ref_shape):
            return _ref.misc.assert_shape(tensor, ref_shape)
        def profiled_function(fn):
            return _ref.misc.profiled_function(fn)
        suppress_tracer_warnings = _ref.misc.suppress_tracer_warnings
    ''',
    'torch_utils/ops/upfirdn2d.py': '''
        import torch
        import _reference_ops as _ref
        _up = _ref.upfirdn2d
        def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
            return _up.setup_filter(f, device=device, normalize=normalize, flip_filter=flip_filter, gain=gain,
                                    separable=separable)
        def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
            return _up.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain,
                                 impl='ref')
        def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
            return _up.filter2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain, impl='ref')
        def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
            return _up.upsample2d(x, f, up=up, padding=padding, flip_filter=flip_filter, gain=gain, impl='ref')
        def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
            return _up.downsample2d(x, f, down=down, padding=padding, flip_filter=flip_filter, gain=gain,
                                    impl='ref')
    ''',
    'torch_utils/ops/bias_act.py': '''
        import dnnlib
        import _reference_ops as _ref
        _FIELDS = ('func', 'def_alpha', 'def_gain', 'cuda_idx', 'ref', 'has_2nd_grad')
        activation_funcs = {name: dnnlib.EasyDict({k: spec[k] for k in _FIELDS})
                            for name, spec in _ref.bias_act.activation_funcs.items()}
        def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
            return _ref.bias_act.bias_act(x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp,
                                          impl='ref')
    ''',
    'torch_utils/ops/conv2d_resample.py': '''
        import _reference_ops as _ref
        def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
            return _ref.conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                                                        flip_weight=flip_weight, flip_filter=flip_filter)
    ''',
    'torch_utils/ops/fma.py': '''
        import _reference_ops as _ref
        def fma(a, b, c):
            return _ref.fma.fma(a, b, c)
    ''',
    'torch_utils/ops/conv2d_gradfix.py': '''
        import contextlib
        import torch
        enabled = False
        weight_gradients_disabled = False
        @contextlib.contextmanager
        def no_weight_gradients():
            yield
        def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
            return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
        def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
            return torch.nn.functional.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                                        dilation)
    ''',
    'torch_utils/ops/grid_sample_gradfix.py': '''
        # What their module does on torch 2.x: plain torch grid_sample with the fixed semantics.
        import torch
        enabled = False
        def grid_sample(input, grid):
            return torch.nn.functional.grid_sample(input=input, grid=grid, mode='bilinear', padding_mode='zeros',
                                                   align_corners=False)
    ''',
}

LOADER = '''
import json, os, pickle, sys, types
import numpy as np
import torch

repo, stub_dir, snapshot, out = sys.argv[1:5]
sys.path.insert(0, repo)
from torch_utils import misc
from torch_utils.ops import bias_act, conv2d_resample, fma, upfirdn2d
ref = types.ModuleType('_reference_ops')
ref.__dict__.update(misc=misc, bias_act=bias_act, conv2d_resample=conv2d_resample, fma=fma, upfirdn2d=upfirdn2d)
sys.modules['_reference_ops'] = ref

# Hide our tree: forget its modules and take it off the path; only the stand-in tree remains.
OURS = ('torch_utils', 'training', 'dnnlib', 'patches', 'metrics', 'legacy', 'schedulers')
for name in list(sys.modules):
    if name.split('.')[0] in OURS:
        del sys.modules[name]
sys.path = [stub_dir] + [p for p in sys.path if os.path.abspath(p or os.getcwd()) != repo]
# An editable install of our project maps its module names from a finder at the end of meta_path.
sys.meta_path = [f for f in sys.meta_path if '__editable__' not in (getattr(f, '__module__', None) or '')]

import torch_utils
assert os.path.dirname(torch_utils.__file__) == os.path.join(stub_dir, 'torch_utils'), torch_utils.__file__
with open(snapshot, 'rb') as f:
    data = pickle.load(f)
G, pipe = data['G_ema'], data['augment_pipe']
z = torch.from_numpy(np.random.RandomState(0).randn(3, G.z_dim)).float()
with torch.no_grad():
    img = G(z, torch.zeros([3, G.c_dim]), noise_mode='const')
    torch.manual_seed(1)
    aug = pipe(img)
modules = sorted(n for n in sys.modules if n.split('.')[0] in OURS)
classes = {k: type(v).__module__ for k, v in data.items() if isinstance(v, torch.nn.Module)}
np.savez(out, img=img.numpy(), aug=aug.numpy())
print(json.dumps(dict(modules=modules, classes=classes)))
'''


def _write_stub_tree(root):
    for rel, text in STUBS.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(textwrap.dedent(text))


def _default_snapshot(path):
    """What the training loop writes with the defaults (--aug=ada: the bgc pipe), tiny networks."""
    kw = training_helpers.tiny_loop_kwargs('dataset.zip', None)
    common = dict(c_dim=0, img_resolution=training_helpers.RES, img_channels=3)
    torch.manual_seed(0)
    G = dnnlib.util.construct_class_by_name(**kw['G_kwargs'], **common)
    D = dnnlib.util.construct_class_by_name(**kw['D_kwargs'], **common)
    pipe = AugmentPipe(**augpipe_specs['bgc'])
    pipe.p.fill_(0.6)
    modules = dict(G=G, D=D, G_ema=copy.deepcopy(G), augment_pipe=pipe)
    data = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in modules.items()}
    network_pickle.save_network_pkl(path, dict(training_set_kwargs=kw['training_set_kwargs'], cur_nimg=0, **data))
    return path


@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    return _default_snapshot(str(tmp_path_factory.mktemp('snap') / 'network-snapshot-000000.pkl'))


PACKAGES = {'torch_utils', 'torch_utils.ops', 'dnnlib'}  # from these, only the modules listed above


def _imports(source):
    """(module, name or None) for every import statement of `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend((node.module, alias.name) for alias in node.names)
    return found


def _import_allowed(module, name):
    if module.split('.')[0] in THIRD_PARTY_ROOTS:
        return True
    if name is None or module in PACKAGES:
        return (module if name is None else f'{module}.{name}') in UPSTREAM_MODULES
    return module in UPSTREAM_MODULES


def test_stored_sources_import_only_upstream_modules(snapshot):
    with open(snapshot, 'rb') as f:
        raw = network_pickle.safe_load(f)
    for key in ('G', 'D', 'G_ema', 'augment_pipe'):
        for module, name in _imports(raw[key].module_src):
            assert _import_allowed(module, name), f'{key} imports {name} from {module}'


def test_default_snapshot_loads_in_an_upstream_only_tree(snapshot, tmp_path):
    stub_dir = str(tmp_path / 'upstream')
    _write_stub_tree(stub_dir)
    script = tmp_path / 'load.py'
    script.write_text(LOADER)
    out = str(tmp_path / 'out.npz')
    result = subprocess.run([sys.executable, str(script), ROOT, stub_dir, snapshot, out], cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=''), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report['modules']) <= UPSTREAM_MODULES, report['modules']
    # Every class came from its executed source, as in their loader (not from our tree).
    assert all(m.startswith('_imported_module_') for m in report['classes'].values()), report['classes']

    # Same images as our own loader gives.
    data = network_pickle.load_network_pkl(snapshot)
    G, pipe = data['G_ema'], data['augment_pipe']
    z = torch.from_numpy(np.random.RandomState(0).randn(3, G.z_dim)).float()
    with torch.no_grad():
        img = G(z, torch.zeros([3, G.c_dim]), noise_mode='const')
        torch.manual_seed(1)
        aug = pipe(img)
    theirs = np.load(out)
    assert np.array_equal(theirs['img'], img.numpy())
    assert np.array_equal(theirs['aug'], aug.numpy())
    assert not np.array_equal(theirs['aug'], theirs['img'])  # the pipe really transformed something
