"""The CUDA plugins: they compile (slow), and the build-once / warn-once / raise policy of custom_ops.

test_plugins_compile needs nvcc but no GPU (it targets sm_90 when no GPU is visible). It FAILS when $CI
is set and the toolkit is missing or the build breaks; outside CI it skips only when nvcc is missing.
The policy tests simulate a broken toolchain by monkeypatching custom_ops._build; they run on CPU.
"""

import os
import time
import types
import warnings

import pytest
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act, upfirdn2d

OPS = [(upfirdn2d, 'upfirdn2d'), (bias_act, 'bias_act')]
FAKE_CUDA_TENSOR = types.SimpleNamespace(device=torch.device('cuda'))  # which_impl only looks at .device


@pytest.fixture
def fresh_state(monkeypatch):
    """An empty plugin cache for this test; the process-wide one is restored afterwards."""
    monkeypatch.setattr(custom_ops, '_plugins', {})
    monkeypatch.setattr(custom_ops, '_failures', {})
    monkeypatch.setattr(custom_ops, '_warned', set())
    monkeypatch.setattr(custom_ops, 'verbosity', 'none')


@pytest.fixture
def broken_build(monkeypatch, fresh_state):
    """Every build fails like an nvcc that does not know the GPU; returns the list of attempts."""
    attempts = []

    def fake_build(module_name, sources, headers, build_kwargs):
        attempts.append(module_name)
        raise RuntimeError("Error building extension:\n[1/3] nvcc ...\n"
                           "nvcc fatal   : Unsupported gpu architecture 'compute_999'\nninja: build stopped")
    monkeypatch.setattr(custom_ops, '_build', fake_build)
    return attempts


# ----------------------------------------------------------------------------------------------------------
# Compilation (slow).

@pytest.mark.slow
def test_plugins_compile(monkeypatch, fresh_state, capsys):
    if custom_ops.find_cuda_home() is None:
        if os.environ.get('CI'):
            pytest.fail('CI is set but no CUDA toolkit (nvcc + headers) was found: the plugin build is untested')
        pytest.skip('nvcc not found')
    if not os.environ.get('TORCH_CUDA_ARCH_LIST') and not torch.cuda.is_available():
        monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0')  # no GPU to ask: compile for Hopper
    for module, fn_name in OPS:
        start = time.time()
        plugin = custom_ops.get_plugin(module._PLUGIN_NAME, module._SOURCES, module._HEADERS, **module._BUILD_KWARGS)
        with capsys.disabled():
            print(f'\n{module._PLUGIN_NAME}: built/loaded in {time.time() - start:.1f} s')
        assert callable(getattr(plugin, fn_name))
        assert custom_ops.plugin_status(module._PLUGIN_NAME) == 'built'


# ----------------------------------------------------------------------------------------------------------
# Which path runs, and what a failed build does.

def test_cpu_tensors_take_reference_without_building(broken_build):
    x = torch.randn([1, 2, 6, 6])
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    for module, _ in OPS:
        assert module.which_impl(x) == 'ref'
    upfirdn2d.upsample2d(x, f)
    bias_act.bias_act(x, torch.zeros(2), act='lrelu')
    assert broken_build == []  # no build was even attempted


@pytest.mark.parametrize('module,fn_name', OPS)
def test_auto_warns_once_and_falls_back(module, fn_name, broken_build):
    with pytest.warns(RuntimeWarning, match="Unsupported gpu architecture 'compute_999'"):
        assert module.which_impl(FAKE_CUDA_TENSOR, 'auto') == 'ref'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # any further warning would raise
        for _ in range(3):
            assert module.which_impl(FAKE_CUDA_TENSOR, 'auto') == 'ref'
    assert broken_build == [module._PLUGIN_NAME]  # exactly one build attempt
    assert custom_ops.plugin_status(module._PLUGIN_NAME) == 'failed'


@pytest.mark.parametrize('module,fn_name', OPS)
def test_cuda_impl_raises_on_failed_build(module, fn_name, broken_build):
    for _ in range(2):
        with pytest.raises(custom_ops.PluginBuildError, match=f'{module._PLUGIN_NAME}.*compute_999'):
            module.which_impl(FAKE_CUDA_TENSOR, 'cuda')
    assert broken_build == [module._PLUGIN_NAME]


def test_missing_nvcc_is_named(monkeypatch, fresh_state):
    monkeypatch.setattr(custom_ops, 'find_cuda_home', lambda: None)
    monkeypatch.delenv('CUDA_HOME', raising=False)
    with pytest.raises(custom_ops.PluginBuildError, match='nvcc not found'):
        custom_ops.get_plugin('demo_plugin', [])


def test_find_cuda_home_rejects_wrapper_dirs(monkeypatch, tmp_path):
    wrapper = tmp_path / 'wrapper'
    (wrapper / 'bin').mkdir(parents=True)
    (wrapper / 'bin' / 'nvcc').write_text('#!/bin/sh\n')
    toolkit = tmp_path / 'toolkit'
    for sub in ('bin/nvcc', 'include/cuda_runtime.h'):
        (toolkit / sub).parent.mkdir(parents=True, exist_ok=True)
        (toolkit / sub).write_text('')
    monkeypatch.setenv('CUDA_HOME', str(wrapper))
    monkeypatch.setenv('CUDA_PATH', str(toolkit))
    assert custom_ops.find_cuda_home() == str(toolkit)


def test_build_name_tracks_source_contents(tmp_path):
    src = tmp_path / 'op.cu'
    src.write_text('// v1')
    first = custom_ops.build_name('op_plugin', [str(src)], {})
    assert first == custom_ops.build_name('op_plugin', [str(src)], {})
    src.write_text('// v2')
    assert custom_ops.build_name('op_plugin', [str(src)], {}) != first
    assert custom_ops.build_name('op_plugin', [str(src)], {'extra_cuda_cflags': ['-O3']}) != \
        custom_ops.build_name('op_plugin', [str(src)], {})


@pytest.mark.gpu
def test_gpu_fallback_gives_reference_results(broken_build):
    x = torch.randn([2, 3, 8, 8], device='cuda')
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device='cuda')
    with pytest.warns(RuntimeWarning):
        y = upfirdn2d.upsample2d(x, f)
    torch.testing.assert_close(y, upfirdn2d.upsample2d(x, f, impl='ref'))
    with pytest.warns(RuntimeWarning):
        z = bias_act.bias_act(x, torch.ones(3, device='cuda'), act='lrelu')
    torch.testing.assert_close(z, bias_act.bias_act(x, torch.ones(3, device='cuda'), act='lrelu', impl='ref'))


@pytest.mark.gpu
def test_gpu_auto_uses_cuda_when_built():
    x = torch.zeros([1, 1, 4, 4], device='cuda')
    for module, _ in OPS:
        assert module.which_impl(x) == 'cuda'
        assert module.cuda_available()
