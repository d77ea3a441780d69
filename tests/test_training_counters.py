"""The training step is lean on an accelerator: host syncs and host->device copies, counted per step.

The run is a real CPU run of the loop (data, RNG, ADA, ticks), watched by a TorchFunctionMode that
plays the accelerator: every tensor that exists when the loop starts (the networks, optimizer state,
buffers) and everything computed from one is a "device" tensor; tensors built from host data
(torch.tensor/as_tensor/from_numpy, a factory without a device, a DataLoader batch) are "host"
tensors. Then, as on a GPU:

- a read of a device tensor on the host (.item(), float(), bool(), .tolist(), .cpu(), nonzero, a
  boolean mask, ...) is a sync;
- a host-data factory with a device (torch.tensor(x, device=d)) is a copy;
- moving a host tensor to a device (.to(d), .cuda(), copy_) is an upload;
- a host tensor handed to an op on device tensors is a copy (a "mixed" op).

Host reads of host tensors (Adam's step counter lives on the host on every device) cost nothing.
A step may sync only where the augment pipe reads its geometric padding, exactly once per call.
Counting, not timing, so the test is exact on a CPU-only machine.
"""

import collections
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from test_augment_counters import _HOST_DATA_FACTORIES, lenient_padding_reads
from training_helpers import ada_kwargs, tiny_loop_kwargs, write_image_zip

_HOST_READS = {'item', 'tolist', 'numpy', 'cpu', '__float__', '__int__', '__bool__', '__index__', '__complex__',
               'nonzero', 'argwhere', 'unique', 'unique_consecutive', 'masked_select', 'equal', 'allclose',
               'is_nonzero'}
_MOVES = {'to', 'cuda', 'pin_memory', 'copy_'}


def _call_site():
    """'file:function' of the innermost caller outside torch and this file (where the call was written)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if '/torch/' not in name and name != __file__:
            return f'{name.rsplit("/", 1)[-1]}:{frame.f_code.co_name}'
        frame = frame.f_back
    return '?'


def _target(args, kwargs):
    """Where a call puts its result: 'host', 'device' or None (not named).

    The string 'cpu' names the host (torch's optimizers write their host-side step counters so); a
    torch.device object is the run's device (on this CPU run, `run.device` and `x.device` are 'cpu').
    """
    spec = kwargs.get('device')
    if spec is None:
        spec = next((a for a in args[1:] if isinstance(a, (torch.device, str, torch.Tensor))), None)
    if spec is None:
        return None
    if isinstance(spec, torch.Tensor):
        return spec
    return 'host' if isinstance(spec, str) and torch.device(spec).type == 'cpu' else 'device'


class DeviceModel(TorchFunctionMode):
    """Tags tensors host/device as they are made and records syncs and copies, by segment and call site."""

    def __init__(self):
        super().__init__()
        self.host = WeakIdKeyDictionary()   # tensors that live on the host (everything else: the device)
        self.segment = ('setup', 0)         # (kind, step index) the next events belong to
        self.events = []                    # (segment, kind, function name, call site, shapes)
        self.augment_calls = collections.Counter()  # segment -> AugmentPipe calls in it

    def is_host(self, t):
        return t in self.host

    def _record(self, kind, name, tensors=(), **details):
        shapes = [(tuple(t.shape), t.dtype) for t in tensors]
        self.events.append((self.segment, kind, name, _call_site(), shapes, details))

    def hosted(self, factory):
        """Wrap a factory the mode cannot see (torch.from_numpy): its tensors live on the host."""
        def make(*args, **kwargs):
            tensor = factory(*args, **kwargs)
            self.host[tensor] = True
            return tensor
        return make

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host_result = self._classify(name, args, kwargs, inputs)
        result = func(*args, **kwargs)
        for t in tree_leaves(result):
            if isinstance(t, torch.Tensor):
                if host_result:
                    self.host[t] = True
                else:
                    self.host.pop(t, None)
        return result

    def _classify(self, name, args, kwargs, inputs):
        """Record what the call costs on an accelerator; returns whether its result lives on the host."""
        hosted = [t for t in inputs if self.is_host(t)]
        on_device = [t for t in inputs if not self.is_host(t)]
        if name in _HOST_READS:
            if on_device:
                self._record('sync', name, on_device)
            return True
        if name == '__getitem__' and on_device and any(t.dtype == torch.bool for t in inputs[1:]):
            self._record('sync', 'boolean mask', on_device)
        if name in _MOVES or name in _HOST_DATA_FACTORIES:
            return self._move(name, args, kwargs, inputs)
        if not inputs:
            return _target(args, kwargs) != 'device'  # a factory: on the device only when asked
        if hosted and on_device:
            self._record('mixed', name, hosted)
        return not on_device

    def _move(self, name, args, kwargs, inputs):
        """.to/.cuda/.pin_memory/copy_/torch.tensor(...): uploads, copies and reads back."""
        if name == 'copy_':
            dst, src = inputs[0], inputs[1]
            if self.is_host(src) != self.is_host(dst):
                self._record('upload' if self.is_host(src) else 'sync', name, [src])
            return self.is_host(dst)
        target = 'device' if name == 'cuda' else 'host' if name == 'pin_memory' else _target(args, kwargs)
        if isinstance(target, torch.Tensor):
            target = 'host' if self.is_host(target) else 'device'
        if name in _HOST_DATA_FACTORIES and not inputs:
            if target == 'device':
                self._record('copy', name)  # host data built straight into a device tensor
            return target != 'device'
        src_host = self.is_host(inputs[0])
        if target == 'device' and src_host:
            self._record('upload', name, [inputs[0]], non_blocking=bool(kwargs.get('non_blocking')))
        elif target == 'host' and not src_host:
            self._record('sync', name, [inputs[0]])
        return src_host if target is None else target == 'host'


# ----------------------------------------------------------------------------
# A watched run: segments are the steps, the ADA adjustment inside each step, and the tick ends.


def _watched_run(tmp_path, monkeypatch, steps, labels=False, **overrides):
    """Train `steps` iterations under DeviceModel; returns (model, the DeviceModel, phases run per step)."""
    from training import ada as ada_lib
    from training import augment, ticks, training_loop
    watch = DeviceModel()
    forward = augment.AugmentPipe.forward

    def counted_forward(pipe, *args, **kwargs):
        watch.augment_calls[watch.segment] += 1
        return forward(pipe, *args, **kwargs)
    monkeypatch.setattr(augment.AugmentPipe, 'forward', counted_forward)
    for factory in ('from_numpy', 'frombuffer'):
        monkeypatch.setattr(torch, factory, watch.hosted(getattr(torch, factory)))
    _segment(monkeypatch, ada_lib.AdaController, 'after_step', watch, 'ada')
    _segment(monkeypatch, ticks, 'end_tick', watch, 'tick')
    real_train = training_loop._train

    def train(*args, **kwargs):
        watch.segment = ('step', 0)
        with watch:
            return real_train(*args, **kwargs)
    monkeypatch.setattr(training_loop, '_train', train)

    phases = []

    def next_step(model, counters, step):
        phases.append(step.phases)
        watch.segment = ('step', counters.batch_idx)
    data = write_image_zip(str(tmp_path / 'tiny.zip'), labels=labels)
    kw = tiny_loop_kwargs(data, str(tmp_path / 'run'), batch_size=4, batch_gpu=2, total_kimg=steps * 4 / 1000,
                          kimg_per_tick=1000, iteration_fn=next_step, **ada_kwargs(ada_interval=4, ada_kimg=0.1))
    kw['training_set_kwargs']['use_labels'] = labels
    kw.update(overrides)
    result = training_loop.training_loop(**kw)
    assert result.state == 'finished' and result.counters.batch_idx == steps
    return result.model, watch, phases


def _segment(monkeypatch, owner, attr, watch, kind):
    """Wrap owner.attr so that the events it causes land in a segment of their own."""
    real = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        outer = watch.segment
        watch.segment = (kind, outer[1])
        try:
            return real(*args, **kwargs)
        finally:
            watch.segment = outer
    monkeypatch.setattr(owner, attr, wrapped)


def _by_segment(events, kind):
    """{step index: [(event kind, name, site, shapes, details)]} of one segment kind."""
    out = {}
    for (seg_kind, index), *event in events:
        if seg_kind == kind:
            out.setdefault(index, []).append(tuple(event))
    return out



# ----------------------------------------------------------------------------
# The model itself.


def _watch(fn, *host_tensors):
    """Run fn under a fresh DeviceModel in which `host_tensors` live on the host; returns [(kind, name)]."""
    watch = DeviceModel()
    for t in host_tensors:
        watch.host[t] = True
    with watch:
        fn()
    return [(kind, name) for _segment, kind, name, _site, _shapes, _details in watch.events]


def test_the_model_sees_syncs_copies_and_uploads():
    dev, host = torch.ones([3]), torch.ones([3])
    assert _watch(lambda: dev.sum().item()) == [('sync', 'item')]
    assert _watch(lambda: float(dev.sum())) == [('sync', '__float__')]
    assert _watch(lambda: bool(torch.isfinite(dev).all())) == [('sync', '__bool__')]
    assert _watch(lambda: dev[dev > 0]) == [('sync', 'boolean mask')]
    assert _watch(lambda: dev.to('cpu')) == [('sync', 'to')]
    assert _watch(lambda: dev.tolist() and dev.cpu()) == [('sync', 'tolist'), ('sync', 'cpu')]
    assert _watch(lambda: torch.tensor([0.5], device=dev.device)) == [('copy', 'tensor')]
    assert _watch(lambda: host.to(dev.device, non_blocking=True), host) == [('upload', 'to')]
    assert _watch(lambda: dev.copy_(host), host) == [('upload', 'copy_')]
    assert _watch(lambda: dev * torch.tensor(2.0), host) == [('mixed', 'mul')]
    # Free: host reads of host tensors, device factories, python scalars, and what stays on the device.
    assert _watch(lambda: host.sum().item() + torch.tensor(1.0, device='cpu').item(), host) == []
    assert _watch(lambda: (dev * 2 + torch.randn([3], device=dev.device)).clamp(0, 1).sum()) == []
    assert _watch(lambda: torch.as_tensor(dev, dtype=torch.float64).to(dev.device)) == []


# ----------------------------------------------------------------------------
# The training step.


# The one host read an augment call may make: its geometric step's padding (four integers).
PADDING_READ = ('sync', 'tolist', 'augment.py:_fitted_padding')


def _unexpected(events, augment_calls):
    """The step's events other than uploads and one padding read per augment call (all of them if the
    padding reads do not number exactly one per call)."""
    others = [event for event in events if event[0] != 'upload']
    reads = [event for event in others if event[:3] == PADDING_READ]
    if len(reads) != augment_calls:
        return others
    return [event for event in others if event[:3] != PADDING_READ]


def _assert_lean_step(index, events, label_shape, augment_calls):
    """No sync but one padding read per augment call, no copy or mixed op; exactly two non-blocking
    uploads: the uint8 images and all the labels."""
    assert augment_calls > 0, index
    unexpected = _unexpected(events, augment_calls)
    assert unexpected == [], (index, augment_calls, unexpected)
    uploads = sorted((str(shapes), details['non_blocking']) for kind, _name, _site, shapes, details in events
                     if kind == 'upload')
    expected = [(str([((4, 3, 32, 32), torch.uint8)]), True), (str([(label_shape, torch.float32)]), True)]
    assert uploads == sorted(expected), (index, uploads)


@pytest.mark.slow
@pytest.mark.parametrize('reg, labels, steps', [((2, 4), False, 9), ((None, None), True, 5)],
                         ids=['lazy-regularisation', 'regularised-every-step-with-labels'])
def test_steady_state_steps_sync_only_to_adjust_ada_and_read_the_padding(tmp_path, monkeypatch, fresh_training_stats, reg, labels, steps):
    """Per step: two uploads (images, labels) and one padding read per augment call; other syncs only
    in the ADA adjustment every 4 steps and at tick ends."""
    model, watch, phases = _watched_run(tmp_path, monkeypatch, steps, labels=labels, G_reg_interval=reg[0],
                                        D_reg_interval=reg[1])
    events = watch.events
    label_shape = (4 + 4 * len(model.phases), model.G.c_dim)  # this step's reals + every phase's fakes
    step_events, ada_events = _by_segment(events, 'step'), _by_segment(events, 'ada')
    for index in range(1, steps):  # step 0 builds caches and optimizer state
        _assert_lean_step(index, step_events[index], label_shape, watch.augment_calls['step', index])
        syncs = ada_events.get(index, [])
        assert bool(syncs) == ((index + 1) % 4 == 0), (index, syncs)  # ada_interval 4: after steps 4, 8, ...
        assert {site.split(':')[0] for _kind, _name, site, *_rest in syncs} <= {'ada.py', 'training_stats.py'}
    assert _by_segment(events, 'tick'), 'tick ends are watched too (and may sync)'
    expected_phases = {'Gmain', 'Greg', 'Dmain', 'Dreg'} if reg[0] else {'Gboth', 'Dboth'}
    assert set().union(*phases[1:]) == expected_phases
    # One process: no gradient averager, no hooks on the parameters.
    assert model.averagers == {}
    assert all(p._post_accumulate_grad_hooks is None for p in [*model.G.parameters(), *model.D.parameters()])


def _plant_cutoff_read(monkeypatch):
    """Reads the style-mixing cutoff on the host (a per-step int())."""
    from training import loss as loss_lib
    mix_styles = loss_lib.mix_styles
    monkeypatch.setattr(loss_lib, 'mix_styles', lambda ws, other, cutoff: mix_styles(ws, other, int(cutoff)))
    return {('sync', '__int__', 'loss.py:run_G')}


def _plant_second_padding_read(monkeypatch):
    """Fits (and reads) the geometric padding twice per augment call."""
    from training import augment
    fitted = augment._fitted_padding
    monkeypatch.setattr(augment, '_fitted_padding', lambda *a: fitted(*a) and fitted(*a))
    return {PADDING_READ}


@pytest.mark.slow
@pytest.mark.parametrize('plant', [_plant_cutoff_read, _plant_second_padding_read], ids=['loss', 'augment'])
def test_a_sync_added_to_the_step_is_caught(tmp_path, monkeypatch, fresh_training_stats, plant):
    """A planted host read in the step (even a second padding read per augment call) is reported at its call site."""
    planted = plant(monkeypatch)
    _model, watch, _phases = _watched_run(tmp_path, monkeypatch, 3, G_reg_interval=2, D_reg_interval=4)
    unexpected = _unexpected(_by_segment(watch.events, 'step')[2], watch.augment_calls['step', 2])
    assert unexpected and {event[:3] for event in unexpected} == planted, unexpected


@pytest.mark.gpu
def test_cuda_steady_state_steps_sync_only_for_ada_and_the_padding(tmp_path, monkeypatch, fresh_training_stats):
    """On a GPU: torch's sync detector raises on any synchronising call (a blocking copy included) in a step,
    the ADA adjustment and the augment pipe's padding reads excepted."""
    from training import ada as ada_lib
    from training import training_loop
    step, after_step = training_loop.training_step, ada_lib.AdaController.after_step
    padding_reads = lenient_padding_reads(monkeypatch)

    def strict_step(run, state, *args):
        strict = state.counters.batch_idx >= 2  # the first steps build the CUDA plugins, caches and optimizer state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error' if strict else 'default')
        try:
            return step(run, state, *args)
        finally:
            torch.cuda.set_sync_debug_mode('default')

    def lenient_after_step(self, batch_idx):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode('default')
        try:
            return after_step(self, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode(mode)
    monkeypatch.setattr(training_loop, 'training_step', strict_step)
    monkeypatch.setattr(ada_lib.AdaController, 'after_step', lenient_after_step)
    data = write_image_zip(str(tmp_path / 'tiny.zip'))
    kw = tiny_loop_kwargs(data, str(tmp_path / 'run'), batch_size=4, batch_gpu=2, total_kimg=0.036, kimg_per_tick=1000,
                          device='cuda', data_loader_kwargs=dict(pin_memory=True, num_workers=0),
                          G_reg_interval=2, D_reg_interval=4, **ada_kwargs(ada_interval=4, ada_kimg=0.1))
    assert training_loop.training_loop(**kw).counters.batch_idx == 9
    assert padding_reads, 'the augment pipe ran'  # how many per step is counted on the CPU
