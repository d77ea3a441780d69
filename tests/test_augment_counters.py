"""AugmentPipe is lean on an accelerator: counted, not timed.

Steady-state calls are run on the `meta` device, which stands in for a GPU on a CPU-only machine:
a meta tensor has no data, so reading one back to the host (.item(), .tolist(), float(), a padding
computed from values) raises, and every CPU tensor that reaches an op is a host->device copy that
would happen on CUDA. Two counters watch each call: a TorchFunctionMode sees every torch call made
from Python (including tensors built from host data, which never reach the dispatcher), and a
TorchDispatchMode sees every aten op and its arguments' devices.
"""

import collections
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from training import augment
from training.augment import AugmentPipe, augpipe_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_OP_CALLS = 1500  # torch calls per bgc call (was 728 before the constants were cached)

_HOST_DATA_FACTORIES = {'tensor', 'as_tensor', 'asarray', 'from_numpy', 'frombuffer'}
_HOST_READS = {'item', 'tolist', 'numpy', 'cpu', '__float__', '__int__', '__bool__', '__index__', '__len__'}


class _Calls(TorchFunctionMode):
    """Counts torch calls from Python; records host-data factories and host reads by name."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.host_copies = []
        self.host_reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        name = getattr(func, '__name__', '')
        if name in _HOST_DATA_FACTORIES:
            self.host_copies.append(name)
        if name in _HOST_READS:
            self.host_reads.append(name)
        return func(*args, **(kwargs or {}))


class _Ops(TorchDispatchMode):
    """Counts aten ops; records the ones fed a CPU tensor (a copy to the device) or reading a scalar."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.host_inputs = []
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(isinstance(t, torch.Tensor) and t.device.type == 'cpu' for t in leaves):
            self.host_inputs.append(name)
        if name in ('_local_scalar_dense', 'item', 'is_nonzero', 'equal', 'nonzero'):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def _count(fn):
    with _Calls() as calls, _Ops() as ops:
        fn()
    return calls, ops


def _meta_pipe(preset, p=0.5):
    pipe = AugmentPipe(**augpipe_specs[preset])
    pipe.p.fill_(p)
    return pipe.to('meta')


def _assert_lean(calls, ops):
    assert calls.host_copies == [] and ops.host_inputs == [], (calls.host_copies, ops.host_inputs)
    assert calls.host_reads == [] and ops.syncs == [], (calls.host_reads, ops.syncs)


def test_counters_catch_what_they_are_meant_to_catch():
    """The counters themselves: a per-call constant and a host read are both seen."""
    x = torch.zeros([2, 3], device='meta')
    calls, ops = _count(lambda: x * torch.as_tensor(0.5, device=x.device))
    assert calls.host_copies == ['as_tensor']
    cpu_scalar = torch.tensor(0.5)
    calls, ops = _count(lambda: x * cpu_scalar)
    assert calls.host_copies == [] and ops.host_inputs == ['mul']
    calls, _ = _count(lambda: pytest.raises(Exception, lambda: x.sum().tolist()))
    assert 'tolist' in calls.host_reads
    y = torch.zeros([2])
    _, ops = _count(lambda: y.sum().item())
    assert ops.syncs == ['_local_scalar_dense']


@pytest.mark.parametrize('preset', ['bgc', 'bgcfnc', 'geom'])
def test_steady_state_call_copies_nothing_and_never_syncs(preset):
    pipe = _meta_pipe(preset)
    x = torch.empty([4, 3, 32, 32], device='meta')
    pipe(x)  # warm-up: builds the per-device constants
    calls, ops = _count(lambda: pipe(x))
    _assert_lean(calls, ops)
    if preset == 'bgc':
        assert calls.count <= MAX_OP_CALLS, calls.count


def test_r1_step_through_the_pipe_copies_nothing_and_never_syncs():
    """Forward, create_graph backward and double backward, as the R1 penalty runs them."""
    pipe = _meta_pipe('bgc')
    x = torch.empty([4, 3, 32, 32], device='meta', requires_grad=True)

    def r1():
        (g,) = torch.autograd.grad(pipe(x).square().sum(), [x], create_graph=True)
        g.square().sum().backward()
    r1()
    calls, ops = _count(r1)
    _assert_lean(calls, ops)


def test_grid_sample_never_takes_an_indexing_path_in_the_pipe():
    """Geometric transforms sample with aten's grid sampler only (no int64 gather on any device)."""
    pipe = _meta_pipe('geom')
    x = torch.empty([2, 3, 16, 16], device='meta', requires_grad=True)
    _, ops = _count(lambda: torch.autograd.grad(pipe(x).sum(), [x]))
    assert ops.ops['grid_sampler_2d'] == 1 and ops.ops['grid_sampler_2d_backward'] == 1, dict(ops.ops)
    assert not {'gather', 'index', 'index_select', 'take_along_dim'} & set(ops.ops), dict(ops.ops)


def test_constants_are_built_once_per_device():
    pipe = _meta_pipe('bgcfnc')
    x = torch.empty([4, 3, 32, 32], device='meta')
    pipe(x)
    before = dict(augment._const_cache)
    pipe(x)
    pipe(x[:, :, :, :])
    assert augment._const_cache.keys() == before.keys()
    assert all(augment._const_cache[k] is v for k, v in before.items())


def test_static_padding_bounds_the_difference_to_a_fitted_padding(monkeypatch):
    """The one numerical change of the cached path: one full reflection of padding, whatever the draws.

    Upstream pads only as far as the batch's matrices need (read back to the host). The samples read
    are the same; only the float32 rounding of the normalised grid differs (a larger padded frame).
    """
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand([2, 3, 6, 6]) * 2 - 1, size=[24, 24], mode='bilinear')
    pipe = AugmentPipe(**augpipe_specs['geom'])
    paddings = []
    for q in (0.1, 0.35, 0.8):
        G_inv = pipe._geometric_matrix(augment._Draws(2, x.device, q), 24, 24)
        fitted = _fitted_padding(G_inv, 24, 24, border=3)
        static = pipe(x, debug_percentile=q)
        monkeypatch.setattr(augment, '_geometry_padding', lambda W, H, fitted=fitted: fitted)
        monkeypatch.setattr(augment, '_const_cache', dict())
        paddings.append(fitted)
        tight = pipe(x, debug_percentile=q)
        monkeypatch.undo()
        diff = float((static - tight).abs().max())
        assert diff < 1e-4, (q, fitted, diff)
    assert any(max(pad) < 23 for pad in paddings), paddings  # some fitted paddings really were smaller


def _fitted_padding(G_inv, W, H, border):
    """Upstream's choice: the padding that covers every sampled pixel of the batch (host side)."""
    cx, cy = (W - 1) / 2 + border, (H - 1) / 2 + border
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).t()
    src = G_inv @ corners
    sx, sy = src[:, 0, :], src[:, 1, :]
    need = torch.stack([-sx.min() - (W - 1) / 2, sx.max() - (W - 1) / 2,
                        -sy.min() - (H - 1) / 2, sy.max() - (H - 1) / 2]) + border + 1
    limit = torch.tensor([W - 1, W - 1, H - 1, H - 1], dtype=need.dtype)
    return [int(v) for v in torch.minimum(need.ceil().clamp(min=0), limit).tolist()]


def test_first_call_under_inference_mode_then_training():
    """Constants cached during a no-grad first call must still work in autograd later."""
    pipe = AugmentPipe(**augpipe_specs['bgc'])
    x = torch.rand([2, 3, 16, 16])
    monkey_cache = dict()
    old, augment._const_cache = augment._const_cache, monkey_cache
    try:
        with torch.inference_mode():
            pipe(x)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(pipe(xg).square().sum(), [xg], create_graph=True)
        g.square().sum().backward()
        assert monkey_cache and torch.isfinite(xg.grad).all()
    finally:
        augment._const_cache = old


def test_first_geometric_call_in_a_process_under_no_grad():
    """The first call in a fresh process, inside torch.no_grad(), then an R1 step (was a crash)."""
    script = textwrap.dedent('''
        import torch
        from training.augment import AugmentPipe, augpipe_specs
        pipe = AugmentPipe(**augpipe_specs['bgc'])
        x = torch.rand([2, 3, 16, 16]) * 2 - 1
        with torch.no_grad():
            y = pipe(x)
        assert y.shape == x.shape and not y.requires_grad
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(pipe(x).square().sum(), [x], create_graph=True)
        g.square().sum().backward()
        assert torch.isfinite(x.grad).all()
        print('ok')
    ''')
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]


@pytest.mark.gpu
def test_cuda_steady_state_call_never_syncs():
    """On a GPU: torch's own sync detector raises on any synchronising call (copies included)."""
    pipe = AugmentPipe(**augpipe_specs['bgc']).cuda()
    pipe.p.fill_(0.5)
    x = torch.rand([4, 3, 64, 64], device='cuda', requires_grad=True)

    def r1():
        (g,) = torch.autograd.grad(pipe(x).square().sum(), [x], create_graph=True)
        g.square().sum().backward()
    r1()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        r1()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
