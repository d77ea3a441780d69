"""Process-group set-up for multi-process training: spawn N local processes, or join torchrun.

Backends: NCCL for CUDA devices, gloo for CPU (so `--device cpu --gpus 2` runs two CPU processes,
which is how the multi-process path is tested without GPUs).

Gradients are averaged with an explicit all-reduce of one flattened buffer per phase
(`all_reduce_mean_`, see training/phases.py) rather than DDP wrappers: the loss takes double-backward through D (R1) and
through the synthesis network (path length), runs sub-networks with and without gradients in the
same phase, and accumulates over several rounds; an explicit reduce after the last round needs no
`find_unused_parameters`, no sync contexts, and costs one collective per phase step.
"""

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
            while not context.join():
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return None


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
