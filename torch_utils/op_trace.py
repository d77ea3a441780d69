"""Run a network on the meta device and record what the custom CUDA ops would be handed, and peak memory.

Meta tensors carry shapes, strides and dtypes but no data, so a forward (and backward) pass at the sizes
users run costs a fraction of a second and allocates nothing. Inside `with OpTrace() as trace:`
  - every call of a custom op (upfirdn2d, bias_act) is recorded as the kernel launches its CUDA path
    would make: the shapes of each launch's input and output (trace.launches);
  - every tensor that an aten op allocates is counted while it is alive, which gives the peak of live
    bytes (trace.peak_bytes). Inside a custom op's reference implementation only the op's result is
    counted: the reference's own intermediates (zero insertion, padding) do not exist on the CUDA path.

The limits the kernels assume (kernel_limit_problems) are stated once here; the ops split their calls to
stay inside them, metrics.metric_utils.choose_batch_gen sizes the generator so that they need not, and
tests/test_shape_audit.py checks both at the sizes of the study.
"""

import itertools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

INT_MAX = 2 ** 31 - 1   # element counts and linear indices of both kernels are 32-bit signed ints
GRID_Y_MAX = 65535      # CUDA grid limit in y and z (x allows 2**31 - 1)
TILE = 32               # outputs per tiled upfirdn2d block along each axis (upfirdn2d.cu kTileW/kTileH)

active = None           # the OpTrace being recorded, or None (the ops test this before anything else)


def kernel_limit_problems(op, in_shape, out_shape):
    """Why one launch of `op` with these [N, C, H, W] (or any-rank) shapes breaks a kernel limit.

    The limits, read from the .cu/.cpp files: input and output element counts (and so every linear index
    and the generic kernel's block count) are 32-bit ints; the tiled upfirdn2d kernel puts ceil(out_h/32)
    in grid y, and falls back to the generic kernel (grid x only) above GRID_Y_MAX tiles, so that is not
    a limit; plane offsets inside the tiled kernel are 32-bit but bounded by the plane size, which is
    below the element count.

    Returns:
        A list of one-line problems (empty when the launch is fine).
    """
    problems = []
    for what, shape in (('input', in_shape), ('output', out_shape)):
        numel = 1
        for s in shape:
            numel *= int(s)
        if numel > INT_MAX:
            problems.append(f'{op}: {what} {list(shape)} has {numel} elements (> INT_MAX)')
    return problems


class OpTrace(TorchDispatchMode):
    """Records custom-op launches and the peak of live tensor bytes (see the module docstring).

    Attributes:
        launches: list of dict(op, in_shape, out_shape, dtype), in call order.
        peak_bytes: the largest sum of live tensor bytes allocated inside the trace.
        live_bytes: the bytes allocated inside the trace that are still alive.
    """

    def __init__(self):
        super().__init__()
        self.launches = []
        self.peak_bytes = self.live_bytes = 0
        self._storages = dict()  # storage id -> [bytes, live tensors viewing it]
        self._inside_op = 0

    # -- custom ops ------------------------------------------------------------------------------------
    def run_op(self, launches, fn):
        """Record `launches` (dicts with op, in_shape, out_shape, dtype), then run fn() counting only its result."""
        self.launches.extend(launches)
        self._inside_op += 1
        try:
            out = fn()
        finally:
            self._inside_op -= 1
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self._count(t, inputs=())
        return out

    def problems(self):
        """Every limit broken by a recorded launch (one line each)."""
        return list(itertools.chain.from_iterable(
            kernel_limit_problems(c['op'], c['in_shape'], c['out_shape']) for c in self.launches))

    # -- memory ----------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._inside_op:
            inputs = {id_ for a in itertools.chain(args, (kwargs or {}).values())
                      for id_ in _storage_ids(a)}
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    self._count(t, inputs)
        return out

    def _count(self, t, inputs):
        """Count t's storage while t is alive, unless it is a view of a tensor made before the trace."""
        sid = t.untyped_storage()._cdata
        entry = self._storages.get(sid)
        if entry is None:
            if sid in inputs:
                return  # a view of a parameter or an input: no new memory
            entry = self._storages[sid] = [t.untyped_storage().nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(t, self._release, sid)

    def _release(self, sid):
        entry = self._storages[sid]
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._storages[sid]

    def __enter__(self):
        global active
        assert active is None, 'OpTrace does not nest'
        active = self
        return super().__enter__()

    def __exit__(self, *exc):
        global active
        active = None
        return super().__exit__(*exc)


def _storage_ids(a):
    if isinstance(a, torch.Tensor):
        return [a.untyped_storage()._cdata]
    if isinstance(a, (list, tuple)):
        return [i for x in a for i in _storage_ids(x)]
    return []


def meta_state(module):
    """{name: meta tensor} for module's parameters and buffers: torch.func.functional_call runs it on meta."""
    return {name: torch.empty_like(t, device='meta')
            for name, t in itertools.chain(module.named_parameters(), module.named_buffers())}
