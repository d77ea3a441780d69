"""Kernels that check themselves (torch_utils/kernel_checks.py) and `python -m torch_utils.ops.selftest`.

On the CPU a fake plugin plays the compiled kernel: a correct one (the reference arithmetic) or one that
is wrong for one variant, as a kernel miscompiled by a new toolkit would be.
"""

import os
import subprocess
import sys

import pytest
import torch

import dnnlib
from torch_utils import kernel_checks
from torch_utils.ops import bias_act as B
from torch_utils.ops import selftest
from torch_utils.ops import upfirdn2d as U

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeUpfirdn2d:
    """The reference arithmetic; `wrong(upx, upy, downx, downy, f)` selects launches that get an error."""

    def __init__(self, wrong=lambda *args: False):
        self.wrong, self.launches = wrong, 0

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        self.launches += 1
        y = U._upfirdn2d_ref(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip, gain)
        return y + 1e-2 if self.wrong(upx, upy, downx, downy, f) else y


class FakeBiasAct:
    """bias_act.cu's arithmetic for linear (1), lrelu (3) and tanh (4); `wrong_tanh` approximates tanh."""

    def __init__(self, wrong_tanh=False):
        self.wrong_tanh, self.launches = wrong_tanh, 0

    def bias_act(self, x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
        assert act in (1, 3, 4) and clamp < 0
        self.launches += 1
        if grad == 0:
            z = x + (b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b.numel() else 0)
            t = {1: z, 3: torch.where(z > 0, z, z * alpha), 4: torch.tanh(z)}[act]
            if act == 4 and self.wrong_tanh:
                t = t * (1 + 1e-3)  # a hardware approximation's relative error
            return t * gain
        if grad == 1 and act == 1:
            return x * gain
        if grad == 1 and act == 3:
            return x * torch.where(yref > 0, torch.ones_like(x), torch.full_like(x, alpha)) * gain
        t = yref / gain
        return x * (1 - t * t) * gain if grad == 1 else x * dy * (-2 * t)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Fake plugins for both ops, the CUDA route for CPU tensors, a fresh check state and a private cache."""
    kernel_checks.reset()
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', str(tmp_path / 'cache'))
    for module in (U, B):
        monkeypatch.setattr(module, 'which_impl', lambda x, impl='auto': 'ref' if impl == 'ref' else 'cuda')
    B._bias_act_cuda.cache_clear()
    state = dict(up=FakeUpfirdn2d(), ba=FakeBiasAct())
    monkeypatch.setattr(U, '_load_plugin', lambda required=True: state['up'])
    monkeypatch.setattr(B, '_load_plugin', lambda required=True: state['ba'])
    yield state
    kernel_checks.reset()
    B._bias_act_cuda.cache_clear()


def test_correct_kernels_pass_every_check(fakes):
    for variant in U.KERNEL_VARIANTS:
        result = kernel_checks.check('upfirdn2d', variant, torch.float32, 'cpu')
        assert result['ok'] and result['max_error'] < 1e-6, (variant, result)
    for act in ('linear', 'lrelu', 'tanh'):
        result = kernel_checks.check('bias_act', act, torch.float32, 'cpu')
        assert result['ok'] and result['max_error'] < 1e-6, (act, result)


def test_variant_names_follow_the_kernels_launch_choice():
    x = torch.zeros([1, 2, 8, 8])
    f4, f12 = U.setup_filter([1, 3, 3, 1]), U.setup_filter([1] * 12)
    assert f12.ndim == 1
    assert U.kernel_variant(x, f4, (2, 2), (1, 1)) == 'tiled 4x4 up2'
    assert U.kernel_variant(x, f12, (1, 1), (2, 2)) == 'tiled 12-tap down2'
    assert U.kernel_variant(x, f4, (2, 1), (1, 1)) == 'generic'
    assert U.kernel_variant(x.contiguous(memory_format=torch.channels_last), f4, (1, 1), (1, 1)) == 'generic nhwc'


def test_a_wrong_upfirdn2d_variant_warns_once_and_takes_the_reference(fakes):
    fakes['up'] = FakeUpfirdn2d(wrong=lambda upx, upy, downx, downy, f: upx == 2 and tuple(f.shape) == (4, 4))
    x = torch.randn([2, 3, 16, 16])
    f = U.setup_filter([1, 3, 3, 1])
    with pytest.warns(RuntimeWarning, match=r'upfirdn2d kernel variant "tiled 4x4 up2" \(float32\).*max error '
                                            r'[0-9.e-]+ > tolerance 2e-05') as record:
        for _ in range(3):
            y = U.upsample2d(x, f)
            torch.testing.assert_close(y, U.upsample2d(x, f, impl='ref'))
    assert len(record) == 1
    # Another variant (whose gradient does not use the up-2 kernel, as down-2's does) keeps the kernel.
    torch.testing.assert_close(U.filter2d(x, f), U.filter2d(x, f, impl='ref'))
    before = fakes['up'].launches
    U.filter2d(x, f)
    assert fakes['up'].launches == before + 1
    assert torch.equal(U.upsample2d(x, f, impl='cuda'), U._upfirdn2d_cuda(
        (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0).apply(x, f))  # impl='cuda' is never rerouted


def test_a_wrong_bias_act_activation_warns_once_and_takes_the_reference(fakes):
    fakes['ba'] = FakeBiasAct(wrong_tanh=True)
    x, b = torch.randn([4, 8, 3, 3]), torch.randn([8])
    with pytest.warns(RuntimeWarning, match=r'bias_act kernel variant "tanh" \(float32\)') as record:
        for _ in range(2):
            torch.testing.assert_close(B.bias_act(x, b, act='tanh'), B.bias_act(x, b, act='tanh', impl='ref'))
    assert len(record) == 1
    B.bias_act(x, b, act='lrelu')  # checks lrelu (which passes) at its first use
    launches = fakes['ba'].launches
    B.bias_act(x, b, act='lrelu')
    assert fakes['ba'].launches == launches + 1  # lrelu keeps the kernel


def test_a_kernel_that_raises_fails_its_check_and_the_call_takes_the_reference(fakes):
    class Broken(FakeBiasAct):
        def bias_act(self, *args):
            raise RuntimeError('bias_act: kernel launch failed: no kernel image is available for execution')
    fakes['ba'] = Broken()
    x, b = torch.randn([4, 8, 3, 3]), torch.randn([8])
    with pytest.warns(RuntimeWarning, match=r'"lrelu".*max error inf.*no kernel image is available'):
        torch.testing.assert_close(B.bias_act(x, b, act='lrelu'), B.bias_act(x, b, act='lrelu', impl='ref'))


def test_results_are_cached_per_device_and_build(fakes, monkeypatch):
    calls = []
    checker, build_name = kernel_checks._checkers['bias_act']
    monkeypatch.setitem(kernel_checks._checkers, 'bias_act',
                        (lambda *args: calls.append(args) or checker(*args), build_name))
    assert kernel_checks.check('bias_act', 'lrelu', torch.float32, 'cpu')['cached'] is False
    kernel_checks.reset()  # a new process: only the disk cache is left
    assert kernel_checks.check('bias_act', 'lrelu', torch.float32, 'cpu')['cached'] is True
    assert len(calls) == 1
    files = os.listdir(os.path.join(dnnlib.util._cache_dir_override, 'kernel-checks'))
    assert files == [f'{build_name()}-cpu.json']
    monkeypatch.setitem(kernel_checks._checkers, 'bias_act', (kernel_checks._checkers['bias_act'][0],
                                                              lambda: 'bias_act_plugin_otherbuild'))
    kernel_checks.reset()
    assert kernel_checks.check('bias_act', 'lrelu', torch.float32, 'cpu')['cached'] is False  # another build


def test_selftest_table_names_the_mismatch(fakes):
    fakes['ba'] = FakeBiasAct(wrong_tanh=True)
    rows = []  # selftest.run's rows, for the variants the fakes implement
    for op, variant in [('upfirdn2d', v) for v in U.KERNEL_VARIANTS] + [('bias_act', a) for a in
                                                                      ('linear', 'lrelu', 'tanh')]:
        r = kernel_checks.check(op, variant, torch.float32, 'cpu', use_cache=False)
        rows.append(dict(op=op, variant=variant, dtype='float32', **r))
    text = selftest.format_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2
    assert [line.split()[-1] for line in lines[1:-1]].count('MISMATCH') == 1
    assert 'tanh' in next(line for line in lines if line.endswith('MISMATCH'))
    assert lines[-1].startswith(f'selftest: {len(rows) - 1} of {len(rows)} variants match')


def test_selftest_without_cuda_is_one_line_and_exit_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, '-m', 'torch_utils.ops.selftest'], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == [
        'selftest: no CUDA device: nothing to check (the ops run their PyTorch reference here)']


@pytest.mark.gpu
def test_gpu_selftest_passes_and_caches(tmp_path, monkeypatch):
    monkeypatch.setattr(dnnlib.util, '_cache_dir_override', str(tmp_path))
    kernel_checks.reset()
    rows = selftest.run(torch.device('cuda'), ['float16', 'float32'])
    bad = [r for r in rows if not r['ok']]
    assert not bad, selftest.format_table(bad)
    kernel_checks.reset()
    import time
    start = time.perf_counter()
    for op, variant in selftest.variants():
        assert kernel_checks.allowed(op, variant, torch.float16, torch.device('cuda'))
    assert time.perf_counter() - start < 1.0  # a later process starts from the cache
