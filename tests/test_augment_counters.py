"""AugmentPipe is lean on an accelerator: counted, not timed.

Steady-state calls are run on the `meta` device, which stands in for a GPU on a CPU-only machine:
every CPU tensor that reaches an op is a host->device copy that would happen on CUDA. Two counters
watch each call: a TorchFunctionMode sees every torch call made from Python (including tensors built
from host data, which never reach the dispatcher, and reads back to the host: .tolist(), .item(),
float(), ...), and a TorchDispatchMode sees every aten op and its arguments' devices. A meta tensor
has no values, so the function mode records each host read and answers it as if the tensor held
zeros. The pipe may read exactly one thing per call: its geometric step's padding.
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
            if isinstance(args[0], torch.Tensor) and args[0].device.type == 'meta':
                # No values to read: answer as if the tensor held zeros (a padding of 0 is valid).
                zeros = torch.zeros(args[0].shape, dtype=args[0].dtype)
                return func(zeros, *args[1:], **(kwargs or {}))
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


def _assert_lean(calls, ops, reads):
    """No host->device copy; host reads: exactly `reads` padding reads (one .tolist() each), nothing else."""
    assert calls.host_copies == [] and ops.host_inputs == [], (calls.host_copies, ops.host_inputs)
    assert calls.host_reads == ['tolist'] * reads and ops.syncs == [], (calls.host_reads, ops.syncs)


def _geometric(preset):
    """Whether the preset has a general geometric transform (the step that reads its padding)."""
    return any(augpipe_specs[preset].get(k, 0) for k in ('scale', 'rotate', 'aniso', 'xfrac'))


def test_counters_catch_what_they_are_meant_to_catch():
    """The counters themselves: a per-call constant and a host read are both seen."""
    x = torch.zeros([2, 3], device='meta')
    calls, ops = _count(lambda: x * torch.as_tensor(0.5, device=x.device))
    assert calls.host_copies == ['as_tensor']
    cpu_scalar = torch.tensor(0.5)
    calls, ops = _count(lambda: x * cpu_scalar)
    assert calls.host_copies == [] and ops.host_inputs == ['mul']
    calls, _ = _count(lambda: x.sum().tolist() == 0 and float(x[0, 0]) == 0 and x.sum().item() == 0)
    assert calls.host_reads == ['tolist', '__float__', 'item']
    y = torch.zeros([2])
    _, ops = _count(lambda: y.sum().item())
    assert ops.syncs == ['_local_scalar_dense']


@pytest.mark.parametrize('preset', ['bgc', 'bgcfnc', 'geom', 'blit', 'color'])
def test_steady_state_call_copies_nothing_and_reads_only_the_padding(preset):
    pipe = _meta_pipe(preset)
    x = torch.empty([4, 3, 32, 32], device='meta')
    _count(lambda: pipe(x))  # warm-up: builds the per-device constants
    calls, ops = _count(lambda: pipe(x))
    _assert_lean(calls, ops, reads=int(_geometric(preset)))
    if preset == 'bgc':
        assert calls.count <= MAX_OP_CALLS, calls.count


def test_r1_step_through_the_pipe_copies_nothing_and_reads_only_the_padding():
    """Forward, create_graph backward and double backward, as the R1 penalty runs them: one read, in the forward."""
    pipe = _meta_pipe('bgc')
    x = torch.empty([4, 3, 32, 32], device='meta', requires_grad=True)

    def r1():
        (g,) = torch.autograd.grad(pipe(x).square().sum(), [x], create_graph=True)
        g.square().sum().backward()
    _count(r1)
    calls, ops = _count(r1)
    _assert_lean(calls, ops, reads=1)


def _plant_read_in_padding(monkeypatch):
    fitted = augment._fitted_padding
    monkeypatch.setattr(augment, '_fitted_padding', lambda core, *a: [int(core[0, 0, 0].item())] and fitted(core, *a))


def _plant_read_in_colour(monkeypatch):
    colour = AugmentPipe._color_matrix
    monkeypatch.setattr(AugmentPipe, '_color_matrix', lambda self, draws, c: colour(self, draws, c) * bool(self.p > 0))


@pytest.mark.parametrize('plant', [_plant_read_in_padding, _plant_read_in_colour], ids=['padding', 'colour'])
def test_a_read_added_to_the_pipe_is_caught(monkeypatch, plant):
    """Any host read beyond the padding's one .tolist() fails the check, wherever it is."""
    pipe = _meta_pipe('bgc')
    x = torch.empty([4, 3, 32, 32], device='meta')
    _count(lambda: pipe(x))
    plant(monkeypatch)
    calls, ops = _count(lambda: pipe(x))
    assert len(calls.host_reads) == 2 and 'tolist' in calls.host_reads, calls.host_reads
    with pytest.raises(AssertionError):
        _assert_lean(calls, ops, reads=1)


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
    _count(lambda: pipe(x))
    before = dict(augment._const_cache)
    _count(lambda: pipe(x))
    _count(lambda: pipe(x[:, :, :, :]))
    assert augment._const_cache.keys() == before.keys()
    assert all(augment._const_cache[k] is v for k, v in before.items())


class _FullPaddingPipe(AugmentPipe):
    """The pipe with one full reflection of padding on every side, whatever the draws."""

    @staticmethod
    def _geometry_padding(core, W, H, border):
        return augment._full_padding(W, H)


def _fitted_paddings(monkeypatch):
    """Record every padding the pipe fits (as [left, right, top, bottom] lists)."""
    seen, fitted = [], augment._fitted_padding
    monkeypatch.setattr(augment, '_fitted_padding', lambda *a: seen.append(fitted(*a)) or seen[-1])
    return seen


@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 3e-5)])
def test_fitted_padding_gives_the_full_padding_output(monkeypatch, dtype, tol):
    """Same draws (same RNG use) and the same output as one full reflection, where most paddings are smaller.

    Noise images: every input pixel the sampler or the upsampling filter can reach shows in the output,
    so a padding one pixel short of the reach fails. In float64 only the padding can make a difference.
    """
    seen = _fitted_paddings(monkeypatch)
    for size, spec, p in [((40, 43), augpipe_specs['bg'], 0.5), ((40, 43), augpipe_specs['geom'], 1.0),
                          ((33, 33), dict(scale=1, rotate=1, xfrac=1, scale_std=1.0), 1.0)]:
        x = (torch.rand([2, 3, *size], generator=torch.Generator().manual_seed(5)) * 2 - 1).to(dtype)
        fitted, full = AugmentPipe(**spec).to(dtype), _FullPaddingPipe(**spec).to(dtype)
        fitted.p.fill_(p), full.p.fill_(p)
        for seed in range(12):
            torch.manual_seed(seed)
            y_fitted = fitted(x)
            after_fitted = torch.get_rng_state()
            torch.manual_seed(seed)
            y_full = full(x)
            assert torch.equal(torch.get_rng_state(), after_fitted)
            diff = float((y_fitted - y_full).abs().max())
            assert diff < tol, (size, spec, p, seed, seen[-1], diff)
    capped = [pad for pad in seen if pad == [42, 42, 39, 39] or pad == [32, 32, 32, 32]]
    assert len(seen) == 36 and len(capped) < len(seen) / 2, seen  # most paddings really are smaller


@pytest.mark.parametrize('G_inv, expected', [
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [8, 8, 8, 8]),           # identity: canvas reach 3.25 px, + 4
    ([[1, 0, 5], [0, 1, -3], [0, 0, 1]], [3, 13, 11, 5]),        # translation: one side grows, one shrinks
    # Zoom out 2x: 2 * 18.75 - 15.5 + 4 = 26, moved by the filter lag (-0.2 px, see _geometry_frame):
    # the map is x -> 2 (x - lag) + lag.
    ([[2, 0, 0], [0, 2, 0], [0, 0, 1]], [26, 27, 26, 27]),
    ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], [8, 7, 8, 8]),          # a quarter turn: x -> -y + 2 lag
    ([[4, 0, 0], [0, 4, 0], [0, 0, 1]], [31, 31, 31, 31]),       # capped at one full reflection
])
def test_fitted_padding_values(G_inv, expected):
    """The padding of a 32x32 batch for simple transforms, in closed form (centred pixel coordinates)."""
    lag_in, post = augment._geometry_frame(32, 32, 3, 'cpu')
    G_inv = torch.tensor([G_inv], dtype=torch.float32)
    assert augment._fitted_padding(lag_in @ G_inv @ post, 32, 32, border=3) == expected


def test_fitted_padding_covers_the_whole_batch():
    """Per side, the widest of the batch: here the translation's right and top, the identity's left and bottom."""
    lag_in, post = augment._geometry_frame(32, 32, 3, 'cpu')
    G_inv = torch.tensor([[[1, 0, 5], [0, 1, -3], [0, 0, 1]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float32)
    assert augment._fitted_padding(lag_in @ G_inv @ post, 32, 32, border=3) == [8, 13, 11, 8]


def test_fitted_padding_is_per_side_and_axis():
    lag_in, post = augment._geometry_frame(20, 12, 3, 'cpu')
    G_inv = torch.tensor([[[1, 0, 2.5], [0, 1, 0], [0, 0, 1]]])
    # x: reach 10 + 2.75 - 9.5 = 3.25, then -2.5 on the left and +2.5 on the right; y: 6 + 2.75 - 5.5.
    assert augment._fitted_padding(lag_in @ G_inv @ post, 20, 12, border=3) == [5, 10, 8, 8]
    assert augment._fitted_padding((lag_in @ G_inv @ post)[:0], 20, 12, border=3) == [0, 0, 0, 0]


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


def lenient_padding_reads(monkeypatch):
    """Let the padding read sync under torch.cuda's sync detector; returns the list it appends to per read."""
    reads, fitted = [], augment._fitted_padding

    def lenient(*args):
        reads.append(1)
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode('default')
        try:
            return fitted(*args)
        finally:
            torch.cuda.set_sync_debug_mode(mode)
    monkeypatch.setattr(augment, '_fitted_padding', lenient)
    return reads


@pytest.mark.gpu
def test_cuda_steady_state_call_syncs_only_to_read_the_padding(monkeypatch):
    """On a GPU: torch's own sync detector raises on any synchronising call (copies included) but the
    padding read, which an R1 step makes once."""
    pipe = AugmentPipe(**augpipe_specs['bgc']).cuda()
    pipe.p.fill_(0.5)
    x = torch.rand([4, 3, 64, 64], device='cuda', requires_grad=True)
    reads = lenient_padding_reads(monkeypatch)

    def r1():
        (g,) = torch.autograd.grad(pipe(x).square().sum(), [x], create_graph=True)
        g.square().sum().backward()
    r1()
    torch.cuda.synchronize()
    reads.clear()
    torch.cuda.set_sync_debug_mode('error')
    try:
        r1()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    assert reads == [1]
