"""What a network pickle may contain besides tensors: bounded plain data and in-range constructor arguments.

A pickle is hostile input. Everything read from it that is not a tensor is checked here before it is used:

- `check_plain`: a JSON-like value (None, bool, int, float, str, list/tuple, dict with str keys) of bounded
  size and depth. The node count includes repeats, so a list that refers to itself (or one shared list
  referenced many times, a "billion laughs" bomb) is refused instead of being expanded by repr/json.
- `check_init_args`: the recorded constructor arguments of a network class, each by name against a range
  (resolution a power of two, channel/layer counts, latent sizes, ...), so that building a module from
  them cannot hang or allocate without bound.
- `estimate_num_params`: the weights the arguments describe, to compare with the tensors present.
- `check_dataset_kwargs`: a pickle's `training_set_kwargs` may name only our own dataset class.

Messages never repr a value of unbounded size: `short` cuts every piece of pickle text to one short line.
"""

import math

import numpy as np

MAX_NODES = 100_000    # containers + leaves visited in one plain value (repeats counted)
MAX_DEPTH = 32         # nesting of containers
MAX_STR = 4096         # characters in one string
DATASET_CLASSES = ('training.dataset.ImageFolderDataset',)  # the only dataset a pickle may name


class PickleContentError(ValueError):
    """A value read from a pickle is out of bounds or of a refused type (the message names it)."""


def short(value, limit=60):
    """One short line for a message: repr cut to `limit` characters, never a full repr of a big value."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        text = repr(value[:limit + 1] if isinstance(value, (str, bytes)) else value)
    else:
        text = f'<{type(value).__name__}>'
    text = text.replace('\n', ' ').replace('\r', ' ')
    return text if len(text) <= limit else text[:limit] + '...'


# ----------------------------------------------------------------------------
# Bounded plain values.

_LEAVES = (type(None), bool, int, float, str)


def check_plain(value, what, max_nodes=MAX_NODES, max_depth=MAX_DEPTH):
    """Raise PickleContentError unless `value` is bounded JSON-like data (see module docstring).

    Args:
        value: the object read from the pickle.
        what: its name in messages (e.g. 'training_set_kwargs').
    """
    budget = [max_nodes]
    _walk(value, what, 0, budget, max_depth)


def _cut(where, limit=80):
    return where if len(where) <= limit else where[:limit] + '...'


def _walk(value, where, depth, budget, max_depth):
    budget[0] -= 1
    if budget[0] < 0:
        raise PickleContentError(f'{_cut(where)}: more than {MAX_NODES} values (a self-referencing or '
                                 f'shared-structure bomb?)')
    if depth > max_depth:
        raise PickleContentError(f'{_cut(where)}: nested deeper than {max_depth} levels')
    if isinstance(value, _LEAVES + (np.integer, np.floating, np.bool_)):
        if isinstance(value, str) and len(value) > MAX_STR:
            raise PickleContentError(f'{_cut(where)}: string of {len(value)} characters (limit {MAX_STR})')
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PickleContentError(f'{_cut(where)}: dict key of type {type(key).__name__} (only str keys)')
            _walk(key, where, depth + 1, budget, max_depth)
            _walk(item, f'{where}.{short(key, 30)}', depth + 1, budget, max_depth)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk(item, f'{where}[{index}]', depth + 1, budget, max_depth)
        return
    raise PickleContentError(f'{_cut(where)}: values of type {type(value).__name__} are not allowed here')


# ----------------------------------------------------------------------------
# Constructor arguments, by name. Ranges are generous (several times upstream's largest networks) but
# finite, so a recorded argument can never ask for an unbounded build.

_ACTIVATIONS = ('linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish')


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x):
    return (_is_int(x) or isinstance(x, (float, np.floating))) and math.isfinite(float(x))


def _int(lo, hi, optional=False):
    def check(x):
        if x is None and optional:
            return None
        if not _is_int(x):
            return 'an integer' + (' or None' if optional else '')
        return None if lo <= int(x) <= hi else f'an integer in [{lo}, {hi}]'
    return check


def _real(lo, hi, optional=False, positive=False):
    def check(x):
        if x is None and optional:
            return None
        if not _is_real(x):
            return 'a finite number' + (' or None' if optional else '')
        ok = lo <= float(x) <= hi and (float(x) > 0 or not positive)
        return None if ok else f'a number in {"(" if positive else "["}{lo}, {hi}]'
    return check


def _pow2(lo, hi):
    def check(x):
        if not _is_int(x) or not lo <= int(x) <= hi or int(x) & (int(x) - 1):
            return f'a power of two in [{lo}, {hi}]'
        return None
    return check


def _bool(x):
    return None if isinstance(x, (bool, np.bool_)) else 'True or False'


def _choice(*options):
    def check(x):
        return None if isinstance(x, str) and x in options else 'one of ' + ', '.join(options)
    return check


def _real_list(min_len, max_len):
    def check(x):
        if not isinstance(x, (list, tuple)) or not min_len <= len(x) <= max_len or not all(map(_is_real, x)):
            return f'a list of {min_len}..{max_len} finite numbers'
        return None
    return check


_KWARGS = 'nested'  # marker: a dict of further arguments, checked by the same rules
ARG_RULES = {
    'z_dim': _int(0, 4096), 'w_dim': _int(1, 4096), 'c_dim': _int(0, 65536),
    'img_resolution': _pow2(4, 4096), 'img_channels': _int(1, 16),
    'channel_base': _int(1, 1 << 22), 'channel_max': _int(1, 4096), 'num_fp16_res': _int(0, 16),
    'conv_clamp': _real(0, 1e6, optional=True, positive=True),
    'num_layers': _int(0, 32), 'num_ws': _int(1, 64, optional=True),
    'embed_features': _int(1, 4096, optional=True), 'layer_features': _int(1, 4096, optional=True),
    'cmap_dim': _int(1, 4096, optional=True),
    'activation': _choice(*_ACTIVATIONS), 'architecture': _choice('orig', 'skip', 'resnet'),
    'lr_multiplier': _real(0, 1e4, positive=True), 'w_avg_beta': _real(0, 1, optional=True),
    'mbstd_group_size': _int(1, 4096, optional=True), 'mbstd_num_channels': _int(0, 64),
    'resample_filter': _real_list(1, 16), 'kernel_size': _int(1, 9),
    'use_noise': _bool, 'channels_last': _bool, 'fp16_channels_last': _bool, 'freeze_layers': _int(0, 1000),
    'mapping_kwargs': _KWARGS, 'synthesis_kwargs': _KWARGS, 'block_kwargs': _KWARGS, 'epilogue_kwargs': _KWARGS,
    'imgfilter_bands': _real_list(1, 16),
}
# AugmentPipe: probability multipliers and strengths (upstream's values are all <= 1 or so).
for _name in ('xflip rotate90 xint xint_max scale rotate aniso xfrac scale_std rotate_max aniso_std xfrac_std '
              'brightness contrast lumaflip hue saturation brightness_std contrast_std hue_max saturation_std '
              'imgfilter imgfilter_std noise cutout noise_std cutout_size').split():
    ARG_RULES[_name] = _real(0, 1e3)


def check_init_args(bound_args):
    """Check every recorded constructor argument against ARG_RULES (nested *_kwargs dicts too).

    Args:
        bound_args: dict name -> value (positional arguments already bound to their names).

    Raises:
        PickleContentError naming the argument (dotted for nested ones) and the accepted range.
    """
    check_plain(dict(bound_args), 'constructor arguments')
    _check_args(bound_args, '')


def _check_args(args, prefix):
    for name, value in args.items():
        rule = ARG_RULES.get(name)
        if rule is None:
            raise PickleContentError(f'unknown constructor argument {prefix}{short(name, 40)}')
        if rule is _KWARGS:
            if not isinstance(value, dict):
                raise PickleContentError(f'argument {prefix}{name} must be a dict')
            _check_args(value, f'{prefix}{name}.')
            continue
        problem = rule(value)
        if problem:
            raise PickleContentError(f'argument {prefix}{name}={short(value, 40)} must be {problem}')


# ----------------------------------------------------------------------------
# Parameter-count estimate (weights only, so it stays below the true count of an honest pickle).


def _channels(channel_base, channel_max, res):
    return min(channel_base // res, channel_max)


def _mapping_weights(z_dim, c_dim, w_dim, kw):
    embed = kw.get('embed_features') or w_dim
    layer = kw.get('layer_features') or w_dim
    num_layers = kw.get('num_layers', 8)
    first = z_dim + (embed if c_dim else 0)
    dims = [first] + [layer] * max(num_layers - 1, 0) + [w_dim]
    total = c_dim * embed if c_dim else 0
    return total + sum(a * b for a, b in zip(dims[:-1], dims[1:])) if num_layers else total


def _generator_weights(a):
    w_dim, res_max = a.get('w_dim', 0), a.get('img_resolution', 4)
    syn = a.get('synthesis_kwargs') or {}
    base, cmax = syn.get('channel_base', 32768), syn.get('channel_max', 512)
    total = _mapping_weights(a.get('z_dim', 0), a.get('c_dim', 0), w_dim, a.get('mapping_kwargs') or {})
    res = 4
    while res <= res_max:
        out, cin = _channels(base, cmax, res), (_channels(base, cmax, res // 2) if res > 4 else 0)
        total += 9 * out * (cin + out) + w_dim * (cin + 2 * out) + out * a.get('img_channels', 3)
        total += 16 * out if res == 4 else 0
        res *= 2
    return total


def _discriminator_weights(a):
    res_max, c_dim = a.get('img_resolution', 4), a.get('c_dim', 0)
    base, cmax = a.get('channel_base', 32768), a.get('channel_max', 512)
    c4 = _channels(base, cmax, 4)
    cmap = a.get('cmap_dim') or c4
    total = 9 * c4 * c4 + 16 * c4 * c4 + c4 * (cmap if c_dim else 1)
    if c_dim:
        total += _mapping_weights(0, c_dim, cmap, dict(a.get('mapping_kwargs') or {}))
    res = res_max
    while res > 4:
        tmp, out = _channels(base, cmax, res), _channels(base, cmax, res // 2)
        total += 9 * tmp * tmp + 9 * tmp * out
        res //= 2
    return total


def estimate_num_params(class_name, bound_args):
    """Weights that the (already range-checked) arguments describe; 0 for classes without an estimate."""
    if class_name == 'Generator':
        return _generator_weights(bound_args)
    if class_name == 'Discriminator':
        return _discriminator_weights(bound_args)
    return 0


# ----------------------------------------------------------------------------
# Dataset arguments stored in a pickle.


def check_dataset_kwargs(kwargs, what='training_set_kwargs'):
    """Raise PickleContentError unless `kwargs` names only our dataset class with plain arguments.

    Nothing named in a pickle is ever constructed or called: construct-by-name on a pickle's class_name
    would run any importable callable (e.g. torch.hub.load on a local hubconf.py).
    """
    if not isinstance(kwargs, dict):
        raise PickleContentError(f'{what}: expected a dict, got {type(kwargs).__name__}')
    check_plain(kwargs, what)
    class_name = kwargs.get('class_name')
    if class_name not in DATASET_CLASSES:
        raise PickleContentError(f'{what} names the dataset class {short(class_name, 60)}; only '
                                 f'{", ".join(DATASET_CLASSES)} can be built from a pickle')
