"""Process-group set-up for multi-process training: spawn N local processes, or join torchrun.

Backends: NCCL for CUDA devices, gloo for CPU (so `--device cpu --gpus 2` runs two CPU processes,
which is how the multi-process path is tested without GPUs).

Gradients are averaged by `GradAverager` rather than DDP wrappers: the loss takes double-backward
through D (R1) and through the synthesis network (path length), runs sub-networks with and without
gradients in the same phase, makes two backward passes per round in some phases (D on fakes, then on
reals), and accumulates over several rounds. DDP would need `find_unused_parameters` and no_sync for
all but one backward pass; post-accumulate-grad hooks that listen only in the phase's last backward
pass give the same bucketed, overlapped all-reduce without wrapping the networks.
"""

import contextlib
import functools
import os
import re
import signal
import tempfile

import torch

# ----------------------------------------------------------------------------
# Environment detection.


def torchrun_env():
    """Rank layout when started by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set), else None.

    Returns:
        dict(rank, world_size, local_rank) or None.
    """
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        return dict(rank=int(os.environ['RANK']), world_size=int(os.environ['WORLD_SIZE']),
                    local_rank=int(os.environ.get('LOCAL_RANK', os.environ['RANK'])))
    return None


def resolve_device_type(requested='auto'):
    """'auto' -> 'cuda' when a GPU is present else 'cpu'; 'cuda' without a GPU raises ValueError.

    Args:
        requested: 'auto', 'cpu' or 'cuda'.

    Returns:
        'cpu' or 'cuda'.
    """
    if requested in (None, 'auto'):
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if requested == 'cuda' and not torch.cuda.is_available():
        raise ValueError('CUDA was requested but torch sees no GPU')
    if requested not in ('cpu', 'cuda'):
        raise ValueError(f'unknown device {requested!r}')
    return requested


def device_for(device_type, local_rank):
    """The torch.device a rank trains on."""
    return torch.device('cuda', local_rank) if device_type == 'cuda' else torch.device('cpu')


def backend_for(device_type):
    return 'nccl' if device_type == 'cuda' else 'gloo'


# ----------------------------------------------------------------------------
# Process groups.


def is_initialized():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size():
    return torch.distributed.get_world_size() if is_initialized() else 1


def rank():
    """This process's rank in the process group (0 for a single process)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def print0(*args):
    """print on rank 0 only, flushed (log.txt tees stdout)."""
    if rank() == 0:
        print(*args, flush=True)


def init_process_group(rank, world, device_type, init_file=None):
    """Join the process group (no-op for a single process).

    Args:
        rank: this process's rank.
        world: number of processes.
        device_type: 'cpu' (gloo) or 'cuda' (NCCL).
        init_file: shared file for the file:// rendezvous (local spawn); None = env:// (torchrun).
    """
    if world <= 1 or is_initialized():
        return
    backend = backend_for(device_type)
    if device_type == 'cuda':
        torch.cuda.set_device(rank if init_file is not None else int(os.environ.get('LOCAL_RANK', rank)))
    init_method = f'file://{os.path.abspath(init_file)}' if init_file is not None else 'env://'
    torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world)


def _spawn_entry(rank, fn, world, device_type, init_file, args):
    init_process_group(rank, world, device_type, init_file)
    try:
        fn(rank, *args)
    finally:
        if is_initialized():
            torch.distributed.destroy_process_group()


def launch(fn, args, num_procs, device_type, forward_signals=()):
    """Run `fn(rank, *args)` on `num_procs` ranks.

    One process: called in-process (its return value is returned). Several:
    `torch.multiprocessing.start_processes` with a file rendezvous in a fresh temporary directory;
    the signals in `forward_signals` (e.g. SIGTERM, SIGUSR1) that reach this parent are passed on
    to every rank, so a scheduler that signals only the parent still stops all ranks cleanly.
    Under torchrun, call `join_torchrun` instead.

    Args:
        fn: a module-level function (it is pickled by reference for spawn).
        args: tuple of picklable arguments.
        num_procs: number of ranks.
        device_type: 'cpu' or 'cuda'.
        forward_signals: signal numbers to pass on to the ranks.
    """
    if num_procs == 1:
        return fn(0, *args)
    if device_type == 'cuda' and torch.cuda.device_count() < num_procs:
        raise ValueError(f'{num_procs} processes requested but only {torch.cuda.device_count()} GPU(s) are visible')
    with tempfile.TemporaryDirectory() as temp_dir:
        init_file = os.path.join(temp_dir, '.torch_distributed_init')
        context = torch.multiprocessing.start_processes(
            fn=_spawn_entry, args=(fn, num_procs, device_type, init_file, args), nprocs=num_procs, join=False,
            start_method='spawn')

        def forward(signum, _frame):
            for process in context.processes:
                if process.is_alive():
                    os.kill(process.pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in forward_signals}
        try:
            while not join_ranks(context):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return None


class RankFailed(RuntimeError):
    """A spawned rank raised or died; the message is one line: which rank, and its error's last line."""


def join_ranks(context):
    """context.join(), with a rank's failure as RankFailed (one line) instead of its whole traceback."""
    try:
        return context.join()
    except torch.multiprocessing.ProcessRaisedException as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise RankFailed(f'rank {e.error_index}: {lines[-1].strip() if lines else "failed"}') from None
    except torch.multiprocessing.ProcessExitedException as e:
        raise RankFailed(f'rank {e.error_index} exited with status {e.exit_code} (killed or out of memory?)') from None


def join_torchrun(device_type):
    """Initialise the process group from torchrun's environment.

    Args:
        device_type: 'cpu' or 'cuda'.

    Returns:
        dict(rank, world_size, local_rank).
    """
    env = torchrun_env()
    assert env is not None, 'not started by torchrun'
    init_process_group(env['rank'], env['world_size'], device_type, init_file=None)
    return env


def leave_torchrun(all_done):
    """Tear down the process group that join_torchrun set up, before the interpreter exits.

    Left to interpreter shutdown, a gloo group can abort a rank whose peer has already gone ("terminate
    called without an active exception"). After a normal end every rank first waits for the others;
    after an error it does not (torchrun stops the other ranks).
    """
    if not is_initialized():
        return
    if all_done:
        barrier()
    torch.distributed.destroy_process_group()


def broadcast_object(obj, src=0):
    """Send a picklable object from `src` to every rank (identity for one process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier():
    if world_size() > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------
# Tensor synchronisation.


def broadcast_module(module, src=0):
    """Copy every parameter and buffer of `module` from rank `src` to all ranks, in place."""
    if world_size() == 1 or module is None:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(tensor.data, src=src)


def all_reduce_mean_(tensor):
    """Average `tensor` over ranks in place with one collective (no-op for one process)."""
    world = world_size()
    if world > 1:
        torch.distributed.all_reduce(tensor)
        tensor /= world
    return tensor


def any_rank(flag, device):
    """True on every rank when `flag` is true on any rank (one tiny collective; plain bool for one process)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def assert_consistent(module, name, ignore_regex=None):
    """Raise if any parameter/buffer of `module` differs between rank 0 and this rank.

    Args:
        module: the module to check.
        name: label for the error message.
        ignore_regex: names matching it (re.fullmatch) are skipped, e.g. r'.*\\.w_avg' (each rank
            tracks its own W average from its own latents, as upstream).
    """
    if world_size() == 1 or module is None:
        return
    for tensor_name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if ignore_regex is not None and re.fullmatch(ignore_regex, tensor_name):
            continue
        ref = tensor.detach().clone()
        torch.distributed.broadcast(ref, src=0)
        same = torch.equal(torch.nan_to_num(ref), torch.nan_to_num(tensor.detach()))
        if not same:
            raise RuntimeError(f'{name}.{tensor_name} differs between ranks')


# ----------------------------------------------------------------------------
# Gradient averaging overlapped with backward.

BUCKET_BYTES = 25 * 2**20  # as DDP's default: big enough for bandwidth, small enough to start early


class _Bucket:
    """One flat buffer of gradients; its all-reduce starts once every member's final gradient is in."""

    def __init__(self, members, params):
        self.members = members  # parameter indices
        first = params[members[0]]
        self.flat = torch.zeros([sum(params[i].numel() for i in members)], dtype=first.dtype, device=first.device)
        self.pending = len(members)
        self.work = None


def _bucket_layout(params, order, bucket_bytes):
    """Parameter indices in `order`, cut into runs of about bucket_bytes with one dtype and device each."""
    runs, size = [], 0
    for index in order:
        p = params[index]
        key = (p.dtype, p.device)
        if not runs or size + p.numel() * p.element_size() > bucket_bytes or runs[-1][0] != key:
            runs.append((key, []))
            size = 0
        runs[-1][1].append(index)
        size += p.numel() * p.element_size()
    return [members for _key, members in runs]


class GradAverager:
    """Averages the gradients of `params` over ranks in ~25 MB buckets, overlapped with backward.

    Post-accumulate-grad hooks listen only inside `final_backward()`, the phase's last backward pass
    (earlier passes and accumulation rounds only add into .grad). There each gradient is copied into
    its bucket and becomes a view of it; a bucket's async all-reduce starts once all its members are in
    and every earlier bucket has started, so every rank issues the collectives in the same order.
    `finish()` sends the rest, waits and divides by the world size: per element the same sum and
    division as one all-reduce of all gradients.

    The layout follows the order in which gradients reached rank 0 in the first final pass (backward
    runs roughly opposite to registration, but G registers synthesis before mapping); that first
    phase sends everything in finish(). Make one per network, and only when there are several ranks.
    """

    def __init__(self, params, bucket_bytes=None):
        self.params = list(params)
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.buckets = None     # built at the first finish()
        self.slots = {}         # parameter index -> (bucket, offset)
        self.arrived = []       # parameter indices in arrival order, until the layout is built
        self.taken = set()      # parameter indices copied into their bucket in this phase
        self.listening = False
        self.next = 0           # first bucket whose all-reduce has not started
        for index, p in enumerate(self.params):
            was = p.requires_grad
            p.requires_grad_(True)  # hooks can only be registered on tensors that require grad
            p.register_post_accumulate_grad_hook(functools.partial(self._on_grad, index))
            p.requires_grad_(was)

    @contextlib.contextmanager
    def final_backward(self):
        """Wrap the phase's last backward pass: the gradients it leaves are final and may be sent."""
        self.listening = True
        try:
            yield
        finally:
            self.listening = False

    def _on_grad(self, index, param):
        if not self.listening:
            return
        if self.buckets is None:
            self.arrived.append(index)
            return
        self._take(index)
        self._send_ready()

    def _take(self, index):
        """Move the parameter's gradient into its bucket slot (zeros when it has none)."""
        assert index not in self.taken, 'one backward pass per final_backward()'
        param = self.params[index]
        bucket, offset = self.slots[index]
        view = bucket.flat[offset:offset + param.numel()].view_as(param)
        if param.grad is None:
            view.zero_()
        else:
            view.copy_(param.grad)
            param.grad = view
        self.taken.add(index)
        bucket.pending -= 1

    def _send_ready(self):
        while self.next < len(self.buckets) and self.buckets[self.next].pending == 0:
            self.buckets[self.next].work = torch.distributed.all_reduce(self.buckets[self.next].flat, async_op=True)
            self.next += 1

    def _build(self):
        """Buckets in rank 0's arrival order (then the parameters that never arrived, last first)."""
        arrived, self.arrived = broadcast_object(self.arrived), []
        seen = set(arrived)
        order = arrived + [i for i in reversed(range(len(self.params))) if i not in seen]
        self.buckets = [_Bucket(members, self.params) for members in
                        _bucket_layout(self.params, order, self.bucket_bytes)]
        for bucket in self.buckets:
            offset = 0
            for index in bucket.members:
                self.slots[index] = (bucket, offset)
                offset += self.params[index].numel()

    def finish(self):
        """Send what is left, wait, average. Returns the flat buckets ([] when no parameter has a gradient)."""
        if not any(p.grad is not None for p in self.params):  # the same on every rank
            return []
        if self.buckets is None:
            self._build()
        for index in range(len(self.params)):
            if index not in self.taken:
                self._take(index)
        self._send_ready()
        world = world_size()
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.flat /= world
            bucket.pending, bucket.work = len(bucket.members), None
        self.taken, self.next = set(), 0
        return [bucket.flat for bucket in self.buckets]
