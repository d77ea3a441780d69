"""The CUDA paths' Python side on the CPU: launches that fit the kernels, the bias_act dim and clamp
contracts, and the build flags. A fake plugin stands in for each binding: it refuses what the binding
refuses (element counts above the launch limit, which the tests lower to a few hundred, a dim out of
range) and computes what the kernel computes, following the .cu files' stated semantics.
"""

import os
import shutil
import subprocess

import pytest
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act as B
from torch_utils.ops import upfirdn2d as U

LIMIT = 600  # elements per launch in these tests


# ----------------------------------------------------------------------------------------------------------
# upfirdn2d.

class FakeUpfirdn2d:
    """The binding's checks (x and the output within LIMIT elements) around the reference op."""

    def __init__(self):
        self.launches = []

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        assert f.ndim == 2
        y = U._upfirdn2d_ref(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip, gain)
        if x.numel() > LIMIT or y.numel() > LIMIT:
            raise RuntimeError('upfirdn2d: x is too large (more than INT_MAX elements)')
        self.launches.append((list(x.shape), list(y.shape)))
        return y


@pytest.fixture
def fake_upfirdn2d(monkeypatch):
    plugin = FakeUpfirdn2d()
    monkeypatch.setattr(U, '_load_plugin', lambda required=True: plugin)
    monkeypatch.setattr(U, 'KERNEL_MAX_NUMEL', LIMIT, raising=False)
    monkeypatch.setattr(U, '_warned_fallback', set(), raising=False)
    return plugin


def _cuda_path(x, f, up=1, down=1, padding=0):
    """The CUDA autograd.Function of upfirdn2d applied to CPU tensors (its plugin is the fake)."""
    args = ((up, up), (down, down), U._parse_padding(padding), False, 1.0)
    return U._upfirdn2d_cuda(*args).apply(x, f), U._upfirdn2d_ref(x, f, *args)


@pytest.mark.parametrize('shape,what', [([12, 3, 6, 6], 'batch'), ([2, 40, 6, 6], 'channels')])
@pytest.mark.parametrize('taps', [[1, 3, 3, 1], [1] * 8])  # 2-D filter (one launch) and separable (two)
def test_upfirdn2d_splits_calls_larger_than_a_launch(shape, what, taps, fake_upfirdn2d):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    f = U.setup_filter(taps)
    y, ref = _cuda_path(x, f, up=2, padding=[2, 1, 2, 1])
    assert x.numel() * 4 > LIMIT  # one launch would not do
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    assert all(max(a[0] * a[1] * a[2] * a[3], b[0] * b[1] * b[2] * b[3]) <= LIMIT for a, b in fake_upfirdn2d.launches)
    if what == 'channels':  # one image is too much: groups of channels
        assert all(a[0] == 1 and a[1] < shape[1] for a, _ in fake_upfirdn2d.launches)
    (dx,) = torch.autograd.grad(y.square().sum(), [x])  # the backward is an upfirdn2d too
    (dx_ref,) = torch.autograd.grad(ref.square().sum(), [x])
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-10)


def test_upfirdn2d_plane_larger_than_a_launch_takes_the_reference_with_one_warning(fake_upfirdn2d):
    x = torch.randn([1, 2, 30, 30], dtype=torch.float64)  # 900 elements in one plane
    f = U.setup_filter([1, 3, 3, 1])
    with pytest.warns(RuntimeWarning, match='exceeds the kernel') as record:
        y, ref = _cuda_path(x, f, padding=[1, 2, 1, 2])
        _cuda_path(x, f, padding=[1, 2, 1, 2])
    assert len(record) == 1 and fake_upfirdn2d.launches == []
    torch.testing.assert_close(y, ref)


# ----------------------------------------------------------------------------------------------------------
# bias_act.

class FakeBiasAct:
    """The binding's checks and the kernel's arithmetic for 'linear' and 'lrelu' (forward and grad=1).

    As bias_act.cu: computed in float32 for float16 inputs, output clamped, and the derivative zero where
    the saved output is not strictly inside (-clamp, clamp).
    """

    def __init__(self):
        self.calls = []

    def bias_act(self, x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
        if not (x.ndim >= 1 and 0 <= dim < x.ndim):
            raise RuntimeError('bias_act: dim out of range')
        if x.numel() > LIMIT:
            raise RuntimeError('bias_act: x is too large (more than INT_MAX elements)')
        if b.numel():
            assert b.ndim == 1 and b.shape[0] == x.shape[dim], 'bias_act: b must have shape [x.size(dim)]'
        for t in (xref, yref, dy):
            assert not t.numel() or t.shape == x.shape
        assert act in (1, 3) and grad in (0, 1)
        self.calls.append(dict(shape=list(x.shape), dim=dim, clamp=clamp))
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        if grad == 0:
            z = x.to(acc) + (b.to(acc).reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b.numel() else 0)
            y = (z if act == 1 else torch.where(z > 0, z, z * alpha)) * gain
            return (y.clamp(-clamp, clamp) if clamp >= 0 else y).to(x.dtype)
        y = yref.to(acc)
        d = x.to(acc) * gain * (1 if act == 1 else torch.where(y > 0, torch.ones_like(y), torch.full_like(y, alpha)))
        if clamp >= 0:
            d = torch.where(y.abs() < clamp, d, torch.zeros_like(d))
        return d.to(x.dtype)


@pytest.fixture
def fake_bias_act(monkeypatch):
    plugin = FakeBiasAct()
    monkeypatch.setattr(B, '_load_plugin', lambda required=True: plugin)
    monkeypatch.setattr(B, 'which_impl', lambda x, impl='auto': 'cuda' if impl != 'ref' else 'ref')
    monkeypatch.setattr(B, 'KERNEL_MAX_NUMEL', LIMIT, raising=False)
    B._bias_act_cuda.cache_clear()
    yield plugin
    B._bias_act_cuda.cache_clear()


@pytest.mark.parametrize('shape,dim', [([5, 7, 11, 3], 1), ([5, 7, 11, 3], 0), ([2, 900], 0), ([2, 900], 1),
                                       ([1300], 0), ([3, 2, 500], 2)])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_bias_act_splits_calls_larger_than_a_launch(shape, dim, layout, fake_bias_act):
    if layout == 'channels_last' and len(shape) != 4:
        pytest.skip('channels_last is 4-D')
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    if layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    b = torch.randn([shape[dim]], dtype=torch.float64, requires_grad=True)
    y = B.bias_act(x, b, dim=dim, act='lrelu', clamp=1.5, impl='cuda')
    ref = B.bias_act(x, b, dim=dim, act='lrelu', clamp=1.5, impl='ref')
    assert x.numel() > LIMIT and len(fake_bias_act.calls) > 1
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad((y * dy).sum(), [x, b])
    grads_ref = torch.autograd.grad((ref * dy).sum(), [x, b])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
    assert all(int(torch.tensor(c['shape']).prod()) <= LIMIT for c in fake_bias_act.calls)


def test_bias_act_without_bias_accepts_the_dims_the_reference_accepts(fake_bias_act):
    """dim only places b: without b, the CUDA path must not hand the binding a dim it refuses."""
    x = torch.randn([500])
    for dim in (1, 3):
        torch.testing.assert_close(B.bias_act(x, None, dim=dim, act='lrelu', impl='cuda'),
                                   B.bias_act(x, None, dim=dim, act='lrelu', impl='ref'))
    scalar = torch.tensor(-2.0)
    torch.testing.assert_close(B.bias_act(scalar, act='lrelu', impl='cuda'),
                               B.bias_act(scalar, act='lrelu', impl='ref'))


def test_bias_act_float16_clamp_masks_gradients_of_saturated_outputs(fake_bias_act):
    """conv_clamp 256 with gain 1/sqrt(2) gives clamp 181.02, which float16 stores as 181.0.

    A saturated float16 output holds 181.0; compared with the unrounded 181.02 it would look unsaturated
    and pass its gradient. The reference (torch.clamp) gives those outputs no gradient.
    """
    clamp = 256 / 2 ** 0.5
    x = torch.tensor([100.0, 150.0, 300.0, -400.0, 5.0], dtype=torch.float16, requires_grad=True)
    y = B.bias_act(x, None, act='linear', gain=1.0, clamp=clamp, impl='cuda')
    ref = B.bias_act(x, None, act='linear', gain=1.0, clamp=clamp, impl='ref')
    assert torch.equal(y, ref)
    (dx,) = torch.autograd.grad(y.sum(), [x])
    (dx_ref,) = torch.autograd.grad(ref.float().sum(), [x])
    assert dx.tolist() == dx_ref.tolist() == [1, 1, 0, 0, 1]
    assert fake_bias_act.calls[0]['clamp'] == 181.0


# ----------------------------------------------------------------------------------------------------------
# Build flags and launch arithmetic (nvcc / a host compiler, no GPU).

def _nvcc():
    home = custom_ops.find_cuda_home()
    return os.path.join(home, 'bin', 'nvcc') if home else None


def test_bias_act_is_built_without_fast_math():
    assert not any('fast_math' in flag for flag in B._BUILD_KWARGS.get('extra_cuda_cflags', []))


def test_bias_act_ptx_has_no_approximate_tanh(tmp_path):
    """--use_fast_math would compile tanhf to tanh.approx.f32 (relative error ~2^-11): float32 tests fail."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip('nvcc not found')
    ptx = tmp_path / 'bias_act.ptx'
    subprocess.run([nvcc, '-ptx', '-arch=sm_90', *B._BUILD_KWARGS['extra_cuda_cflags'], '-I', B._SRC_DIR,
                    os.path.join(B._SRC_DIR, 'bias_act.cu'), '-o', str(ptx)], check=True, capture_output=True,
                   timeout=300)
    text = ptx.read_text()
    assert 'tanh' in text.lower() or 'ex2' in text  # the tanh variant is there
    assert 'tanh.approx' not in text


def test_launch_grid_is_computed_in_64_bits(tmp_path):
    """grid_blocks_1d (launch.h) near and beyond INT_MAX items: a 32-bit (work + threads - 1) overflows."""
    cxx = shutil.which('g++') or shutil.which('c++')
    if cxx is None:
        pytest.skip('no C++ compiler')
    src = tmp_path / 'grid.cpp'
    src.write_text('#include <cstdio>\n#include "launch.h"\nint main() {\n'
                   '  std::printf("%d %d %d %d\\n", grid_blocks_1d(2147483647LL, 256), grid_blocks_1d(0, 256),\n'
                   '              grid_blocks_1d(1LL << 40, 256), grid_blocks_1d(2147483647LL / 4 + 1, 256));\n}\n')
    exe = tmp_path / 'grid'
    subprocess.run([cxx, '-O2', '-I', U._SRC_DIR, str(src), '-o', str(exe)], check=True, timeout=120)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [8388608, 1, 1 << 30, 2097152]


def test_launch_header_is_part_of_both_builds():
    """An edit of launch.h must rebuild both plugins (it is hashed into the build name)."""
    for module in (U, B):
        assert any(path.endswith('launch.h') for path in module._HEADERS)
        assert os.path.isfile(os.path.join(module._SRC_DIR, 'launch.h'))




# ----------------------------------------------------------------------------------------------------------
# The same on a GPU (real kernels).

@pytest.mark.gpu
def test_gpu_bias_act_float16_clamp_gradient_matches_reference():
    clamp = 256 / 2 ** 0.5
    x = (torch.randn([64, 512, 8, 8], device='cuda') * 300).half().requires_grad_(True)
    b = torch.zeros([512], device='cuda', dtype=torch.float16)
    y = B.bias_act(x, b, act='lrelu', clamp=clamp, impl='cuda')
    ref = B.bias_act(x, b, act='lrelu', clamp=clamp, impl='ref')
    torch.testing.assert_close(y, ref)
    (dx,) = torch.autograd.grad(y.float().sum(), [x])
    (dx_ref,) = torch.autograd.grad(ref.float().sum(), [x])
    saturated = ref.abs() >= ref.abs().max()
    assert saturated.any() and (dx[saturated] == 0).all()
    torch.testing.assert_close(dx, dx_ref)


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_calls_beyond_int_max_elements_are_split():
    """33 x 64 x 1024 x 1024 float16 (2.2e9 elements, 4.4 GB): one launch cannot take it."""
    torch.manual_seed(0)
    x = torch.randn([33, 64, 1024, 1024], device='cuda', dtype=torch.float16)
    f = U.setup_filter([1, 3, 3, 1], device='cuda')
    y = U.filter2d(x, f, impl='cuda')
    for i in (0, 32):
        torch.testing.assert_close(y[i:i + 1], U.filter2d(x[i:i + 1], f, impl='ref'), rtol=1e-3, atol=1e-3)
    del y
    b = torch.randn([64], device='cuda', dtype=torch.float16)
    z = B.bias_act(x, b, act='lrelu', clamp=256, impl='cuda')
    for i in (0, 32):
        torch.testing.assert_close(z[i:i + 1], B.bias_act(x[i:i + 1], b, act='lrelu', clamp=256, impl='ref'))
