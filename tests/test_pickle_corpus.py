"""Crafted hostile pickles (tests/pickle_corpus.py): each is refused in one line, and nothing happens.

"Nothing happens" means: no payload ran (no file in the sentinel folder), no process-wide state was
changed (class attributes and function defaults a BUILD could reach), and no file was written beside
the pickle. Speed and memory are measured by benchmarks/bench_pickle_corpus.py (run below once).
"""

import os
import re
import subprocess
import sys
import tempfile
import warnings

import pytest
import torch

import pickle_corpus
from patches import network_pickle, pickle_rules
from patches.network_pickle import NetworkPickleError
from training import networks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTINEL_DIR = tempfile.mkdtemp(prefix='pickle-corpus-sentinel-')
CASES = pickle_corpus.build_corpus(SENTINEL_DIR)


def test_corpus_covers_the_issue():
    names = {c.name for c in CASES}
    assert len(CASES) >= 40
    assert {f'os.system-p{p}' for p in range(6)} <= names
    assert {'z_w_dim_30000', 'mapping_layers_1e7', 'channel_base_1e12', 'tsk-laughs', 'build-easydict-class',
            'build-function-defaults', 'float64-overflow', 'int64-param', 'complex-param', 'bool-param',
            'truncated', 'empty', 'dataset-zip', 'torch.save-zip', 'text'} <= names


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_refused_in_one_line_without_side_effects(case, tmp_path):
    path = tmp_path / 'net.pkl'
    path.write_bytes(case.data)
    before = pickle_corpus.process_fingerprint()
    with pytest.raises(NetworkPickleError) as info:
        network_pickle.load_network_pkl(str(path))
    message = str(info.value)
    assert '\n' not in message and len(message) < 400, message
    assert re.search(case.pattern, message), message
    assert not os.listdir(SENTINEL_DIR), 'a payload ran'
    assert pickle_corpus.process_fingerprint() == before
    assert os.listdir(tmp_path) == ['net.pkl']


def test_the_corpus_base_snapshot_loads(tmp_path):
    """The corpus edits one valid snapshot: that snapshot itself must load (else every case is moot)."""
    data = network_pickle.load_network_pkl(_write(tmp_path, pickle_corpus.snapshot_bytes()))
    ref = pickle_corpus.tiny_generator()
    z = torch.randn([2, 16], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(data['G_ema'](z, None, noise_mode='const'), ref(z, None, noise_mode='const'))


def test_nonfinite_tensors_load_with_the_explicit_flag(tmp_path):
    case = next(c for c in CASES if c.name == 'nan-param')
    path = _write(tmp_path, case.data)
    with pytest.warns(UserWarning, match=r'mapping\.fc0\.weight holds NaN or inf'):
        G = network_pickle.load_network_pkl(path, allow_nonfinite=True)['G']
    assert torch.isnan(G.mapping.fc0.weight).all()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the flag never hides the other checks: complex is still refused
        with pytest.raises(NetworkPickleError, match='complex'):
            network_pickle.load_network_pkl(_write(tmp_path, _case('complex-param').data), allow_nonfinite=True)


def test_float16_and_float64_within_range_still_load(tmp_path):
    """Widening and non-overflowing narrowing are fine (floating to floating)."""
    G = pickle_corpus.tiny_generator()
    w = G.mapping.fc0.weight.detach()
    for dtype in (torch.float16, torch.float64):
        raw = pickle_corpus._with_tensor('_parameters', 'mapping.fc0', 'weight', w.to(dtype))
        loaded = network_pickle.load_network_pkl(_write(tmp_path, raw))['G']
        assert loaded.mapping.fc0.weight.dtype == torch.float32
        assert torch.equal(loaded.mapping.fc0.weight, w.to(dtype).to(torch.float32))


def test_arguments_are_checked_before_anything_is_built(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(network_pickle, 'build_module', lambda *args, **kwargs: built.append(args))
    # G is valid; G_ema (checked in the same pass, before any build) is hostile.
    raw = pickle_corpus.snapshot_bytes(G_ema=pickle_corpus.Record(pickle_corpus._meta(
        pickle_corpus.tiny_generator(), z_dim=30000)))
    with pytest.raises(NetworkPickleError, match='G_ema: cannot build Generator: argument z_dim'):
        network_pickle.load_network_pkl(_write(tmp_path, raw))
    assert built == []


@pytest.mark.parametrize('kwargs', [
    dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
         mapping_kwargs=dict(num_layers=8), synthesis_kwargs=dict(channel_base=16384, channel_max=512)),
    dict(z_dim=64, c_dim=10, w_dim=128, img_resolution=64, img_channels=1,
         mapping_kwargs=dict(num_layers=2, embed_features=32),
         synthesis_kwargs=dict(channel_base=4096, channel_max=128)),
])
def test_weight_estimate_tracks_the_real_networks(kwargs):
    """The estimate is a close lower bound of the true count (so honest pickles pass, big claims do not)."""
    G = networks.Generator(**kwargs)
    D = networks.Discriminator(c_dim=kwargs['c_dim'], img_resolution=kwargs['img_resolution'],
                               img_channels=kwargs['img_channels'],
                               channel_base=kwargs['synthesis_kwargs']['channel_base'],
                               channel_max=kwargs['synthesis_kwargs']['channel_max'])
    for module in (G, D):
        true = sum(t.numel() for t in module.parameters()) + sum(t.numel() for t in module.buffers())
        est = pickle_rules.estimate_num_params(type(module).__name__, module.init_kwargs)
        assert 0.5 * true <= est <= true, (type(module).__name__, est, true)


@pytest.mark.parametrize('tsk, pattern', [
    (dict(class_name='torch.hub.load', repo_or_dir='.', model='x'), r"names the dataset class 'torch\.hub\.load'"),
    (dict(class_name='os.system', path='x'), r"'os\.system'"),
    (dict(path='x.zip'), r'names the dataset class None'),
    (dict(class_name='training.dataset.ImageFolderDataset', path=pickle_corpus._laughs()), r'more than 100000'),
    ([1, 2], r'expected a dict'),
])
def test_dataset_kwargs_from_a_pickle_name_only_our_dataset(tsk, pattern):
    with pytest.raises(pickle_rules.PickleContentError, match=pattern):
        pickle_rules.check_dataset_kwargs(tsk)
    pickle_rules.check_dataset_kwargs(dict(class_name='training.dataset.ImageFolderDataset', path='x.zip',
                                           use_labels=False, max_size=None, xflip=False, resolution=64))


def test_benchmark_reports_every_case_refused_within_memory():
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'bench_pickle_corpus.py')], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    m = re.search(r'peak RSS growth\s*:\s*([0-9.]+) MiB', res.stdout)
    assert m and float(m.group(1)) < 500, res.stdout[-1000:]
    assert re.search(rf'cases\s*:\s*{len(CASES)} \({len(CASES)} refused\)', res.stdout)


def _case(name):
    return next(c for c in CASES if c.name == name)


def _write(tmp_path, raw, name='net.pkl'):
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


def test_every_constructor_argument_of_a_top_level_class_has_a_rule():
    """A new argument of G, D or the augment pipe needs a range in pickle_rules.ARG_RULES, or pickles
    recording it would be refused as 'unknown constructor argument'."""
    import inspect
    from training import augment
    for cls in (networks.Generator, networks.Discriminator, augment.AugmentPipe):
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != 'self' and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        missing = [p.name for p in params if p.name not in pickle_rules.ARG_RULES]
        assert not missing, (cls.__name__, missing)
        defaults = {p.name: p.default for p in params if p.default is not p.empty}
        if defaults:  # the defaults themselves are in range
            pickle_rules.check_init_args({k: v for k, v in defaults.items()
                                          if pickle_rules.ARG_RULES[k] != 'nested' or isinstance(v, dict)})
