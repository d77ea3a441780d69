"""patches.network_pickle: loading upstream-format pickles without executing code, refusing malicious ones.

The "upstream" pickles here are built by hand from upstream's documented persistence format: meta dicts
with module_src text, class_name and a state holding OrderedDicts of tensors, EasyDict init kwargs,
numpy float64 scalars; storages go through torch's own storage pickling.
"""

import collections
import io
import os
import pickle
import re
import subprocess

import numpy as np
import pytest
import torch

import dnnlib
from patches import network_pickle
from patches.network_pickle import NetworkPickleError, UnsafePickleError
from torch_utils import misc
from torch_utils import persistence
from training import networks

# ----------------------------------------------------------------------------
# Hand-made upstream-format pickles.


class _UpstreamObj:
    """Pickles exactly like an upstream persistent object: REDUCE of _reconstruct_persistent_obj(meta)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,), None)


def _easy(value):
    """Nested dicts -> EasyDict, as upstream's train.py builds its kwargs."""
    if isinstance(value, dict):
        return dnnlib.EasyDict({k: _easy(v) for k, v in value.items()})
    return value


def _upstream_meta(module, module_src):
    """The meta dict upstream would write for `module` (with the hook dicts of an old PyTorch)."""
    state = dict(training=module.training)
    state['_parameters'] = collections.OrderedDict(
        (name, None if p is None else torch.nn.Parameter(p.detach().clone(), requires_grad=False))
        for name, p in module._parameters.items())
    state['_buffers'] = collections.OrderedDict(
        (name, None if b is None else b.detach().clone()) for name, b in module._buffers.items())
    state['_non_persistent_buffers_set'] = set()
    for hooks in ('_backward_hooks', '_forward_hooks', '_forward_pre_hooks', '_state_dict_hooks',
                  '_load_state_dict_pre_hooks'):
        state[hooks] = collections.OrderedDict()
    state['_modules'] = collections.OrderedDict(
        (name, _UpstreamObj(_upstream_meta(child, module_src))) for name, child in module._modules.items()
        if child is not None)
    state['_init_args'] = tuple(module.init_args)
    state['_init_kwargs'] = _easy(dict(module.init_kwargs))
    for name, value in vars(module).items():  # plain attributes; gains as numpy float64 like upstream
        if name.startswith('_') or name == 'training':
            continue
        if isinstance(value, float) and name.endswith('gain'):
            value = np.float64(value)
        state[name] = value
    return dict(type='class', version=6, module_src=module_src, class_name=type(module).__name__, state=state)


def _upstream_pickle_bytes(data, protocol, module_src='# upstream networks source text\n'):
    wrapped = {k: (_UpstreamObj(_upstream_meta(v, module_src)) if isinstance(v, torch.nn.Module) else v)
               for k, v in data.items()}
    return pickle.dumps(wrapped, protocol=protocol)


def _tiny_nets(c_dim=0):
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None))
    D = networks.Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                               mapping_kwargs=dict(num_layers=2), epilogue_kwargs=dict(mbstd_group_size=2))
    with torch.no_grad():  # make every tensor distinctive (non-default values, non-zero noise strengths)
        for module in (G, D):
            for _, t in misc.named_params_and_buffers(module):
                if t.is_floating_point():
                    t.add_(torch.randn_like(t) * 0.1)
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False), D.eval().requires_grad_(False)


def _assert_same_tensors(a, b):
    ta, tb = misc.named_params_and_buffers(a), misc.named_params_and_buffers(b)
    assert [n for n, _ in ta] == [n for n, _ in tb]
    for (name, x), (_, y) in zip(ta, tb):
        assert x.dtype == y.dtype and torch.equal(x, y), name


def _images(G, c_dim=0):
    z = torch.from_numpy(np.random.RandomState(3).randn(2, G.z_dim)).float()
    c = torch.eye(max(c_dim, 1))[:2, :c_dim]
    with torch.no_grad():
        return G(z, c, truncation_psi=0.7, noise_mode='const')


# ----------------------------------------------------------------------------
# Loading upstream-format pickles.


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
@pytest.mark.parametrize('c_dim', [0, 4])
def test_upstream_format_pickle_loads_and_matches(tmp_path, protocol, c_dim):
    G, D = _tiny_nets(c_dim)
    raw = _upstream_pickle_bytes(dict(G=G, D=D, G_ema=G, augment_pipe=None,
                                      training_set_kwargs=dict(path='x.zip', resolution=16)), protocol)
    path = tmp_path / 'net.pkl'
    path.write_bytes(raw)
    data = network_pickle.load_network_pkl(str(path))
    assert list(data) == ['training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe']
    assert data['training_set_kwargs'] == dict(path='x.zip', resolution=16) and data['augment_pipe'] is None
    for key, ref in (('G', G), ('D', D), ('G_ema', G)):
        assert type(data[key]) is type(ref)
        _assert_same_tensors(data[key], ref)
        assert not data[key].training and not any(p.requires_grad for p in data[key].parameters())
    assert torch.equal(_images(data['G_ema'], c_dim), _images(G, c_dim))
    img = _images(G, c_dim)
    c = torch.eye(max(c_dim, 1))[:2, :c_dim]
    with torch.no_grad():
        assert torch.equal(data['D'](img, c), D(img, c))
    assert data['G_ema'].init_kwargs == G.init_kwargs


def test_numpy1_global_names_are_accepted(tmp_path):
    """Pickles written under NumPy 1 name numpy.core.multiarray.scalar (NumPy 2 renamed it numpy._core)."""
    G, D = _tiny_nets()
    raw = _upstream_pickle_bytes(dict(G=G, D=D, G_ema=G), protocol=3)
    assert b'numpy._core.multiarray\nscalar\n' in raw
    raw = raw.replace(b'numpy._core.multiarray\nscalar\n', b'numpy.core.multiarray\nscalar\n')
    data = network_pickle.load_network_pkl(_write(tmp_path, raw))
    assert torch.equal(_images(data['G_ema']), _images(G))
    assert data['augment_pipe'] is None and data['training_set_kwargs'] is None


def test_module_src_is_never_executed(tmp_path):
    sentinel = tmp_path / 'pwned'
    src = f'import os\nopen({str(sentinel)!r}, "w").write("x")\nclass Generator: pass\n'
    G, D = _tiny_nets()
    data = network_pickle.load_network_pkl(_write(tmp_path, _upstream_pickle_bytes(dict(G=G, D=D, G_ema=G), 3, src)))
    assert not sentinel.exists()
    assert torch.equal(_images(data['G']), _images(G))


def test_file_object_url_and_legacy_shim(tmp_path):
    import legacy
    G, D = _tiny_nets()
    path = _write(tmp_path, _upstream_pickle_bytes(dict(G=G, D=D, G_ema=G), 4))
    with open(path, 'rb') as f:
        assert torch.equal(_images(legacy.load_network_pkl(f)['G_ema']), _images(G))
    assert legacy.load_network_pkl is network_pickle.load_network_pkl
    assert torch.equal(_images(network_pickle.load_network_pkl('file://' + path)['G_ema']), _images(G))
    with pytest.raises(FileNotFoundError):
        network_pickle.load_network_pkl(str(tmp_path / 'missing.pkl'))


def test_force_fp16_rebuilds_with_upstream_overrides(tmp_path):
    G, D = _tiny_nets()
    data = network_pickle.load_network_pkl(_write(tmp_path, _upstream_pickle_bytes(dict(G=G, D=D, G_ema=G), 4)),
                                           force_fp16=True)
    Gf, Df = data['G_ema'], data['D']
    assert Gf.init_kwargs.synthesis_kwargs.num_fp16_res == 4 and Gf.init_kwargs.synthesis_kwargs.conv_clamp == 256
    assert Df.init_kwargs.num_fp16_res == 4 and Df.init_kwargs.conv_clamp == 256
    assert Gf.synthesis.b16.use_fp16 and Gf.synthesis.b16.conv1.conv_clamp == 256 and Df.b16.use_fp16
    _assert_same_tensors(Gf, G)
    _assert_same_tensors(Df, D)


def test_resume_specs():
    assert set(network_pickle.RESUME_SPECS) == {'ffhq256', 'ffhq512', 'ffhq1024', 'celebahq256', 'lsundog256'}
    for name, url in network_pickle.RESUME_SPECS.items():
        assert url.startswith('https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/'
                              'transfer-learning-source-nets/') and url.endswith('.pkl')
        assert network_pickle.resolve_resume(name) == url
    assert network_pickle.RESUME_SPECS['ffhq512'].endswith('/ffhq-res512-mirror-stylegan2-noaug.pkl')
    assert network_pickle.resolve_resume('/some/file.pkl') == '/some/file.pkl'


# ----------------------------------------------------------------------------
# Tensor name/shape errors.


def _meta_with(G, edit):
    meta = _upstream_meta(G, '')
    edit(meta)
    return pickle.dumps(dict(G=_UpstreamObj(meta)), protocol=4)


def _child(meta, *path):
    for name in path:
        meta = meta['state']['_modules'][name].meta
    return meta['state']


def test_missing_tensor_is_named(tmp_path):
    G, _ = _tiny_nets()
    raw = _meta_with(G, lambda m: _child(m, 'synthesis', 'b8', 'conv0')['_parameters'].pop('bias'))
    with pytest.raises(NetworkPickleError, match=r'missing.*synthesis\.b8\.conv0\.bias'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))


def test_unexpected_tensor_is_named(tmp_path):
    G, _ = _tiny_nets()
    raw = _meta_with(G, lambda m: _child(m, 'mapping')['_buffers'].__setitem__('extra', torch.zeros(3)))
    with pytest.raises(NetworkPickleError, match=r'unexpected.*mapping\.extra'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))


def test_misshaped_tensor_is_named(tmp_path):
    G, _ = _tiny_nets()
    raw = _meta_with(G, lambda m: _child(m, 'synthesis', 'b16', 'torgb')['_parameters'].__setitem__(
        'bias', torch.nn.Parameter(torch.zeros(4))))
    with pytest.raises(NetworkPickleError, match=r'synthesis\.b16\.torgb\.bias has shape \[4\].*needs \[3\]'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))


def test_unknown_class_and_bad_kwargs_are_refused(tmp_path):
    G, _ = _tiny_nets()
    raw = _meta_with(G, lambda m: m.__setitem__('class_name', 'EvilNet'))
    with pytest.raises(NetworkPickleError, match="unknown network class 'EvilNet'"):
        network_pickle.load_network_pkl(_write(tmp_path, raw))
    raw = _meta_with(G, lambda m: m['state']['_init_kwargs'].__setitem__('bogus', 1))
    with pytest.raises(NetworkPickleError, match='cannot build Generator'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))
    raw = _meta_with(G, lambda m: m.__setitem__('version', 5))
    with pytest.raises(NetworkPickleError, match='version'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))


# ----------------------------------------------------------------------------
# Malicious pickles: refused, nothing executed.


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _write(tmp_path, raw, name='net.pkl'):
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


@pytest.mark.parametrize('kind', ['os.system', 'eval', 'exec', 'subprocess.Popen', 'getattr', 'class'])
def test_malicious_globals_refused_and_not_executed(tmp_path, kind):
    sentinel = tmp_path / 'pwned'
    cmd = f'touch {sentinel}'
    payload = {
        'os.system': (os.system, (cmd,), 'system'),
        'eval': (eval, (f'open({str(sentinel)!r}, "w")',), 'builtins.eval'),
        'exec': (exec, (f'open({str(sentinel)!r}, "w")',), 'builtins.exec'),
        'subprocess.Popen': (subprocess.Popen, (['touch', str(sentinel)],), 'subprocess.Popen'),
        'getattr': (getattr, ('text', 'upper'), 'builtins.getattr'),
        'class': (torch.nn.Linear, (2, 2), 'torch.nn.modules.linear.Linear'),
    }[kind]
    func, args, name = payload
    G, D = _tiny_nets()
    # Hide the payload inside an otherwise valid snapshot (in G's state), and also at top level.
    meta = _upstream_meta(G, '')
    meta['state']['evil'] = _Evil(func, args)
    for raw in (pickle.dumps(dict(G=_UpstreamObj(meta)), protocol=3),
                pickle.dumps(_Evil(func, args), protocol=4)):
        with pytest.raises(UnsafePickleError, match=name.replace('.', r'\.')):
            network_pickle.load_network_pkl(_write(tmp_path, raw))
    assert not sentinel.exists()


def test_malicious_storage_blob_refused(tmp_path):
    """The embedded torch.save blob is read with weights_only=True, so code in it is refused too."""
    sentinel = tmp_path / 'pwned'
    blob = pickle.dumps(_Evil(os.system, (f'touch {sentinel}',)), protocol=2)
    raw = pickle.dumps(_Evil(torch.storage._load_from_bytes, (blob,)), protocol=3)
    with pytest.raises(pickle.UnpicklingError):
        network_pickle.load_network_pkl(_write(tmp_path, raw))
    assert not sentinel.exists()


def test_tensorflow_pickle_refused_with_clear_message(tmp_path):
    raw = b'\x80\x03cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01}q\x02b.'
    with pytest.raises(NetworkPickleError, match='TensorFlow-era'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))


def test_non_network_contents_refused(tmp_path):
    with pytest.raises(NetworkPickleError, match='expected a dict'):
        network_pickle.load_network_pkl(_write(tmp_path, pickle.dumps([1, 2])))
    with pytest.raises(NetworkPickleError, match='G: expected a network'):
        network_pickle.load_network_pkl(_write(tmp_path, pickle.dumps(dict(G=3))))


# ----------------------------------------------------------------------------
# Our own snapshots.


def test_save_load_roundtrip(tmp_path):
    G, D = _tiny_nets(c_dim=3)
    path = str(tmp_path / 'network-snapshot-000000.pkl')
    tsk = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path='data.zip', use_labels=True)
    network_pickle.save_network_pkl(path, dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=tsk,
                                               cur_nimg=1234))
    with open(path, 'rb') as f:
        raw = network_pickle.safe_load(f)
    assert list(raw) == ['training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe', 'cur_nimg']
    assert type(raw['training_set_kwargs']) is dict                     # plain dict, as upstream
    assert isinstance(raw['G'], network_pickle.PersistentRecord) and raw['G'].class_name == 'Generator'
    assert 'class SynthesisNetwork' in raw['G'].module_src
    data = network_pickle.load_network_pkl(path)
    assert data['training_set_kwargs'] == dict(tsk) and data['cur_nimg'] == 1234
    for key, ref in (('G', G), ('D', D), ('G_ema', G)):
        _assert_same_tensors(data[key], ref)
        assert data[key].init_kwargs == ref.init_kwargs
    assert torch.equal(_images(data['G_ema'], 3), _images(G, 3))
    # No temporary files are left beside the snapshot.
    assert os.listdir(tmp_path) == ['network-snapshot-000000.pkl']


def test_save_rejects_non_persistent_modules(tmp_path):
    with pytest.raises(TypeError, match='G: Linear is not a persistent class'):
        network_pickle.save_network_pkl(str(tmp_path / 'x.pkl'), dict(G=torch.nn.Linear(2, 2)))
    assert not os.listdir(tmp_path)


def test_augment_pipe_roundtrip(tmp_path):
    augment = pytest.importorskip('training.augment')
    pipe = augment.AugmentPipe(xflip=1, rotate90=1, xint=1, imgfilter_bands=[1, 0, 1, 0])
    with torch.no_grad():
        pipe.p.fill_(0.37)
    path = str(tmp_path / 'snap.pkl')
    network_pickle.save_network_pkl(path, dict(augment_pipe=pipe))
    loaded = network_pickle.load_network_pkl(path)['augment_pipe']
    assert type(loaded) is augment.AugmentPipe and loaded.init_kwargs == pipe.init_kwargs
    _assert_same_tensors(loaded, pipe)
    # Upstream-format record too.
    data = network_pickle.load_network_pkl(_write(tmp_path, _upstream_pickle_bytes(dict(augment_pipe=pipe), 3)))
    assert data['augment_pipe'].p.item() == pytest.approx(0.37)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(network_pickle.RESUME_SPECS))
def test_official_pickle_if_cached(name):
    """NVIDIA's published pickles, when already in the download cache (no network access in tests)."""
    cached = dnnlib.util.url_cache_path(network_pickle.RESUME_SPECS[name])
    if not os.path.isfile(cached):
        pytest.skip(f'{name} not downloaded (python -c "import legacy; legacy.load_network_pkl(\'{name}\')")')
    data = network_pickle.load_network_pkl(cached)
    G = data['G_ema']
    assert G.img_resolution == int(re.search(r'\d+$', name).group())
    img = _images(G)
    assert img.shape[-1] == G.img_resolution and torch.isfinite(img).all()
    assert data['D'] is not None and data['G'] is not None


# ----------------------------------------------------------------------------
# misc.copy_params_and_buffers: the one copy-by-name function (strict mode used by the loader).


def test_copy_params_and_buffers_strict_mode():
    G, _ = _tiny_nets()
    dst = _tiny_nets()[0]
    tensors = dict(misc.named_params_and_buffers(G))
    misc.copy_params_and_buffers(tensors, dst, strict=True)            # a mapping works as the source
    _assert_same_tensors(dst, G)
    bad = [
        ({k: v for k, v in tensors.items() if k != 'mapping.fc0.bias'}, r'missing from the source: mapping\.fc0\.bias'),
        (dict(tensors, extra=torch.zeros(1)), r'unexpected tensor\(s\) in the source: extra'),
        (dict(tensors, **{'mapping.fc0.bias': torch.zeros(3)}), r'mapping\.fc0\.bias has shape \[3\]'),
        (dict(tensors, **{'mapping.fc0.bias': torch.zeros(16, dtype=torch.int32)}), r'int32 cannot fill'),
        (dict(tensors, **{'mapping.fc0.bias': torch.full([16], 1e39, dtype=torch.float64)}), r'overflow'),
        (dict(tensors, **{'mapping.fc0.bias': torch.zeros(16, dtype=torch.complex64)}), r'complex'),
    ]
    before = {k: v.clone() for k, v in misc.named_params_and_buffers(dst)}
    for source, pattern in bad:
        with pytest.raises(ValueError, match=pattern):
            misc.copy_params_and_buffers(source, dst, strict=True)
    for name, tensor in misc.named_params_and_buffers(dst):            # nothing was copied on failure
        assert torch.equal(tensor, before[name]), name
    misc.copy_params_and_buffers(torch.nn.Module(), dst)               # non-strict: missing names are skipped


def test_loader_needs_registered_classes_but_never_imports_them():
    """patches imports no training module; an unregistered class name is an error naming what is known."""
    import ast
    for name in ('network_pickle.py', 'pickle_rules.py'):
        tree = ast.parse(open(os.path.join(os.path.dirname(network_pickle.__file__), name)).read())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split('.')[0] == 'training' for m in mods), mods
    G, _ = _tiny_nets()
    with pytest.raises(NetworkPickleError, match=r"unknown network class 'NotRegistered'.*Generator"):
        raw = _meta_with(G, lambda m: m.__setitem__('class_name', 'NotRegistered'))
        network_pickle.load_network_pkl(io.BytesIO(raw))


def test_submodule_with_var_keyword_constructor_roundtrips(tmp_path):
    # SynthesisNetwork takes **block_kwargs; its record must be rebuilt with those names spread out again.
    G, _ = _tiny_nets()
    path = str(tmp_path / 'synthesis.pkl')
    network_pickle.save_network_pkl(path, dict(G=G.synthesis, D=None, G_ema=G.synthesis, augment_pipe=None))
    loaded = network_pickle.load_network_pkl(path)['G_ema']
    assert type(loaded).__name__ == 'SynthesisNetwork'
    _assert_same_tensors(loaded, G.synthesis)
    ws = torch.randn([2, G.num_ws, G.w_dim], generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ws, noise_mode='const'), G.synthesis(ws, noise_mode='const'))
