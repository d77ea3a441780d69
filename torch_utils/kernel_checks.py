"""Kernels that check themselves: each compiled variant is compared with the reference op at first use.

A variant is one specialisation of a custom kernel (upfirdn2d's tiled 4x4 up-2 case in float16, bias_act's
tanh in float32, ...). The first time a call with impl='auto' would run a variant on a device, the op's
checker runs it on a small random input and compares the output and its gradients with the pure-PyTorch
reference (computed in float64 from the same inputs), against a tolerance for the dtype. On a mismatch
one warning names the variant, its error and the tolerance, and that variant takes the reference for the
rest of the process. impl='cuda' always runs the kernel (the tests of the kernels rely on that).

Results are cached on disk per device and build (the plugin's build name hashes the sources, flags and
torch/CUDA versions), so a later process with the same build and card starts without re-checking:
<dnnlib cache>/kernel-checks/<build name>-<device>.json.
"""

import json
import os
import re
import time
import warnings

import torch

from dnnlib import util

_checkers = dict()   # op -> (checker(variant, dtype, device) -> result dict, build_name() -> str)
_results = dict()    # (device key, op, variant, dtype name) -> result dict (this process)
_loaded = set()      # (device key, op) whose disk cache was read
_warned = set()      # (device key, op, variant, dtype name) already warned about
_routes = dict()     # (op, variant, dtype, device) -> bool: the per-call fast path of allowed()


def reset():
    """Forget every result of this process (tests); the disk cache stays."""
    for state in (_results, _loaded, _warned, _routes):
        state.clear()


def register(op, checker, build_name):
    """Register an op's checker; build_name() names its compiled plugin (the cache key)."""
    _checkers[op] = (checker, build_name)


def device_key(device):
    """'cuda0-NVIDIA_H100_80GB_HBM3-sm90' (CUDA) or the device's string (other devices, e.g. fakes in tests)."""
    device = torch.device(device)
    if device.type != 'cuda':
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    name = re.sub(r'[^A-Za-z0-9._-]+', '_', torch.cuda.get_device_name(index))
    return f'cuda{index}-{name}-sm{major}{minor}'


def _cache_file(op, dev_key):
    return util.make_cache_dir_path('kernel-checks', f'{_checkers[op][1]()}-{dev_key}.json')


def _load_cache(op, dev_key):
    if (dev_key, op) in _loaded:
        return
    _loaded.add((dev_key, op))
    path = _cache_file(op, dev_key)
    try:
        with open(path, encoding='utf-8') as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return  # no cache yet, or an unreadable one: check again
    for name, result in stored.items():
        variant, dtype = name.rsplit('|', 1)
        _results.setdefault((dev_key, op, variant, dtype), result)


def _save_cache(op, dev_key):
    stored = {f'{v}|{d}': r for (k, o, v, d), r in _results.items() if k == dev_key and o == op}
    path = _cache_file(op, dev_key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        util.atomic_write_text(path, json.dumps(stored, indent=1, sort_keys=True) + '\n')
    except OSError:
        pass  # a read-only cache only costs a re-check in the next process


def check(op, variant, dtype, device, use_cache=True):
    """The result of checking one variant (run now, or from this process or the disk cache).

    Returns:
        dict(ok, max_error, tolerance, kernel_ms, ref_ms, cached).
    """
    dev_key = device_key(device)
    dtype_name = str(dtype).replace('torch.', '')
    key = (dev_key, op, variant, dtype_name)
    if use_cache:
        _load_cache(op, dev_key)
        if key in _results:
            return dict(_results[key], cached=True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            result = dict(_checkers[op][0](variant, dtype, torch.device(device)))
    except RuntimeError as err:  # a kernel that fails to run fails its check (the reference still works)
        result = dict(max_error=float('inf'), tolerance=tolerance(dtype), kernel_ms=float('nan'),
                      ref_ms=float('nan'), error=str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
    result['ok'] = bool(result['max_error'] <= result['tolerance'])
    _results[key] = result
    _save_cache(op, dev_key)
    return dict(result, cached=False)


def allowed(op, variant, dtype, device):
    """Whether impl='auto' may run this kernel variant on this device (checks it at first use)."""
    route_key = (op, variant, dtype, device)
    ok = _routes.get(route_key)
    if ok is not None:
        return ok
    result = check(op, variant, dtype, device)
    ok = _routes[route_key] = result['ok']
    if ok:
        return True
    key = (device_key(device), op, variant, str(dtype))
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f'{op} kernel variant "{variant}" ({str(dtype).replace("torch.", "")}) on {key[0]} differs '
                      f'from the reference: max error {result["max_error"]:.3g} > tolerance '
                      f'{result["tolerance"]:.1g}{" (" + result["error"] + ")" if result.get("error") else ""}. '
                      f'Using the pure-PyTorch reference for it in this process.',
                      RuntimeWarning, stacklevel=3)
    return False


def max_error(got, want):
    """max |got - want| / (1 + |want|) in float64: relative for large values, absolute near zero."""
    got, want = got.detach().to(torch.float64), want.detach().to(torch.float64)
    if got.shape != want.shape:
        return float('inf')
    if got.numel() == 0:
        return 0.0
    err = ((got - want).abs() / (1 + want.abs())).max()
    return float(err) if torch.isfinite(err) else float('inf')


def tolerance(dtype):
    """Allowed max_error: a few roundings of the dtype (float16 keeps 11 bits, float32 24)."""
    return {torch.float16: 4e-3, torch.float32: 2e-5, torch.float64: 1e-10}[dtype]


def timed(fn, device):
    """(fn(), milliseconds), synchronised on CUDA so the kernel's time is counted."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - start) * 1e3
