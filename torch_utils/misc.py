"""Small torch helpers shared by the networks, the loss and the training loop.

Shape contracts (`assert_shape`), a cache of constant tensors, parameter/buffer iteration and
copying by name, DDP helpers, and a one-table module summary. Only public torch APIs are used.
"""

import contextlib
import warnings

import numpy as np
import torch

# ----------------------------------------------------------------------------
# Constant tensors, cached: layers ask for the same small constant (e.g. a bias of zeros, a
# filter) on every call; building it once per (value, shape, dtype, device) avoids a host->device
# copy per forward pass.

_constant_cache = dict()


def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A cached tensor holding `value` (optionally broadcast to `shape`).

    Args:
        value: Python number, list, numpy array or tensor.
        shape: Optional shape to broadcast the value to.
        dtype: torch dtype (default: torch's default dtype).
        device: torch device (default: cpu).
        memory_format: torch memory format (default: contiguous).

    Returns:
        A tensor that must not be modified in place (it is shared between callers).
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, str(device), memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


# ----------------------------------------------------------------------------
# Shape contracts.


def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless `tensor` has len(ref_shape) dims matching every non-None entry.

    Args:
        tensor: The tensor to check.
        ref_shape: Sequence of ints or None (None = any size).
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim} {list(tensor.shape)}, '
                             f'expected {len(ref_shape)} {list(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(size, torch.Tensor) or isinstance(ref_size, torch.Tensor):
            # Under tracing sizes are tensors: comparing them would bake the value into the graph.
            continue
        if int(size) != int(ref_size):
            raise AssertionError(f'Wrong size for dimension {idx}: got {list(tensor.shape)}, '
                                 f'expected {list(ref_shape)}')


@contextlib.contextmanager
def suppress_tracer_warnings():
    """Silence torch.jit.TracerWarning inside the block (e.g. Python ints taken from shapes)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        yield


# ----------------------------------------------------------------------------
# Parameters and buffers.


def params_and_buffers(module):
    """List of every parameter, then every buffer, of `module` (recursively)."""
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module):
    """List of (name, tensor): every named parameter, then every named buffer (recursively)."""
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())


def copy_params_and_buffers(src_module, dst_module, require_all=False, strict=False):
    """Copy tensors by name from `src_module` into `dst_module` (in place, no autograd).

    The one copy-by-name function of the project: resume/transfer and the network-pickle loader use it.

    Args:
        src_module: Module to read from, or a mapping name -> tensor.
        dst_module: Module to write into.
        require_all: If True, every tensor of dst_module must exist in the source.
        strict: If True, the names must match exactly both ways, and each source tensor must fit its
            destination's dtype: floating only into floating (no complex, bool or integer), no
            narrowing that turns finite values into inf. Nothing is copied unless everything fits.

    Raises:
        KeyError naming the tensor when require_all (not strict) and a name is missing; ValueError
        naming the tensor(s) for a shape mismatch, and in strict mode for any mismatch.
    """
    assert isinstance(dst_module, torch.nn.Module)
    if isinstance(src_module, torch.nn.Module):
        src_tensors = dict(named_params_and_buffers(src_module))
    else:
        src_tensors = dict(src_module)
    dst_tensors = named_params_and_buffers(dst_module)
    if strict:
        _check_strict_copy(src_tensors, dst_tensors)
    with torch.no_grad():
        for name, tensor in dst_tensors:
            if name not in src_tensors:
                if require_all:
                    raise KeyError(f'{name}: missing from the source module')
                continue
            src = src_tensors[name]
            if tuple(src.shape) != tuple(tensor.shape):
                raise ValueError(f'tensor {name} has shape {list(src.shape)} in the source, but the '
                                 f'destination needs {list(tensor.shape)}')
            tensor.copy_(src.detach())


def _check_strict_copy(src_tensors, dst_tensors):
    """Strict mode of copy_params_and_buffers: names, shapes and dtypes, all checked before any copy."""
    dst_names = {name for name, _ in dst_tensors}
    missing = [name for name, _ in dst_tensors if name not in src_tensors]
    unexpected = [name for name in src_tensors if name not in dst_names]
    if missing:
        raise ValueError(f'tensor(s) missing from the source: {", ".join(missing[:10])}'
                         + (f' and {len(missing) - 10} more' if len(missing) > 10 else ''))
    if unexpected:
        raise ValueError(f'unexpected tensor(s) in the source: {", ".join(unexpected[:10])}'
                         + (f' and {len(unexpected) - 10} more' if len(unexpected) > 10 else ''))
    for name, dst in dst_tensors:
        src = src_tensors[name]
        if not isinstance(src, torch.Tensor):
            raise ValueError(f'tensor {name}: the source holds a {type(src).__name__}, not a tensor')
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f'tensor {name} has shape {list(src.shape)} in the source, but the '
                             f'destination needs {list(dst.shape)}')
        problem = _dtype_problem(src, dst.dtype)
        if problem:
            raise ValueError(f'tensor {name}: {problem}')


def _dtype_problem(src, dst_dtype):
    """Why `src` cannot fill a tensor of `dst_dtype` without changing its meaning, or None."""
    if src.dtype.is_complex:
        return f'complex dtype {src.dtype} (the imaginary part would be dropped)'
    if dst_dtype.is_floating_point:
        if not src.dtype.is_floating_point:
            return f'dtype {src.dtype} cannot fill a {dst_dtype} tensor (floating point needed)'
        if torch.finfo(src.dtype).max > torch.finfo(dst_dtype).max and src.numel():
            finite = torch.isfinite(src)
            if not torch.equal(finite, torch.isfinite(src.to(dst_dtype))):
                return f'values overflow {dst_dtype} (converting from {src.dtype})'
        return None
    if src.dtype != dst_dtype:
        return f'dtype {src.dtype} cannot fill a {dst_dtype} tensor'
    return None


# ----------------------------------------------------------------------------
# Module summary.


def _format_table(rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(*rows)]
    return '\n'.join('  '.join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` once and print a table of submodules, their sizes and output shapes.

    Args:
        module: The module (its forward pass runs once, so e.g. w_avg may update in train mode).
        inputs: List/tuple of positional inputs.
        max_nesting: Deepest submodule level to list.
        skip_redundant: Hide submodules that own no tensors and whose output repeats their parent's.

    Returns:
        The module's outputs.
    """
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))
    outputs, entries = _forward_with_hooks(module, inputs, max_nesting)
    print(_format_table(_summary_rows(module, entries, skip_redundant)))
    print()
    return outputs


def _forward_with_hooks(module, inputs, max_nesting):
    """(outputs, [(submodule, [output tensors])]) in the order the submodules' forward passes finished."""
    entries = []
    depth = [0]

    def pre_hook(_mod, _inputs):
        depth[0] += 1

    def post_hook(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            entries.append((mod, [t for t in outputs if isinstance(t, torch.Tensor)]))

    hooks = [mod.register_forward_pre_hook(pre_hook) for mod in module.modules()]
    hooks += [mod.register_forward_hook(post_hook) for mod in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, entries


def _summary_rows(module, entries, skip_redundant):
    # Count every tensor once, at the first (innermost) entry that owns it.
    seen = set()
    names = {mod: name for name, mod in module.named_modules()}
    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype'],
            ['---'] * 5]
    total_params = total_buffers = 0
    for mod, outs in entries:
        params = [t for t in mod.parameters() if id(t) not in seen]
        buffers = [t for t in mod.buffers() if id(t) not in seen]
        seen.update(id(t) for t in params + buffers)
        if skip_redundant and mod is not module and not params and not buffers and not outs:
            continue
        num_params = sum(t.numel() for t in params)
        num_buffers = sum(t.numel() for t in buffers)
        total_params += num_params
        total_buffers += num_buffers
        label = names.get(mod, '?') or '<top-level>'
        shapes = [str(list(t.shape)) for t in outs] or ['-']
        dtypes = [str(t.dtype).split('.')[-1] for t in outs] or ['-']
        for idx, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            if idx == 0:
                rows.append([label, num_params or '-', num_buffers or '-', shape, dtype])
            else:
                rows.append([label + f':{idx}', '', '', shape, dtype])
    return rows + [['---'] * 5, ['Total', total_params, total_buffers, '', '']]


# ----------------------------------------------------------------------------
# Profiling labels: record_function ranges make the layers show up by name in torch.profiler.


def profiled_function(fn):
    """Decorator: run `fn` inside torch.autograd.profiler.record_function(fn.__name__)."""
    def decorator(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    decorator.__name__ = fn.__name__
    decorator.__doc__ = fn.__doc__
    return decorator
