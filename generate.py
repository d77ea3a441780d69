"""Generate images with a trained network pickle (upstream generate.py options, plus CPU and batching).

Examples:
    python generate.py --network=network-snapshot-000100.pkl --seeds=0-7 --outdir=out
    python generate.py --network=ffhq512 --seeds=1,3-5 --trunc=0.7 --grid=also --outdir=out --device=cpu

Differences from upstream: `--seeds` also takes mixed lists ('1,3-5'); `--device` (CPU works);
`--batch-size` (output is independent of it); `--grid`; grayscale networks are saved as 'L' images;
`--noise-mode=random` is seeded per image, so it is reproducible too.
"""

import contextlib
import math
import os
import re
import warnings

import click
import numpy as np
import PIL.Image

import dnnlib
from dnnlib import cli

# torch is imported inside the functions that use it: `--help` and argument errors answer at once.

# ----------------------------------------------------------------------------
# Argument parsing helpers.


def parse_seeds(text):
    """Parse a seed list: comma-separated items, each a number or an inclusive range 'a-b'.

    '1,3-5' -> [1, 3, 4, 5]. Order is kept; duplicates are dropped (a file per seed).

    Raises:
        ValueError: on an empty item, a non-number, a reversed range or a seed outside [0, 2**32).
    """
    seeds = []
    for item in str(text).split(','):
        item = item.strip()
        m = re.fullmatch(r'(\d+)(?:-(\d+))?', item)
        if m is None:
            raise ValueError(f'cannot read {item!r}: use numbers and ranges like 1,3-5')
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f'range {item!r} runs backwards')
        if hi >= 2 ** 32:
            raise ValueError(f'seed {hi} is too large (np.random.RandomState takes seeds below 2**32)')
        seeds.extend(range(lo, hi + 1))
    return list(dict.fromkeys(seeds))


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA raises ValueError."""
    import torch
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('CUDA is not available on this machine; use --device=cpu or --device=auto')
    return torch.device(name)

# ----------------------------------------------------------------------------
# Library functions.


def load_generator(network, device):
    """Load G_ema from a network pickle path, URL or resume name (e.g. 'ffhq512'), ready for inference.

    Args:
        network: Path, URL, or a name in patches.network_pickle.RESUME_SPECS.
        device:  torch.device to move G_ema to.

    Returns:
        G_ema in eval mode without gradients.

    Raises:
        patches.network_pickle.NetworkPickleError: not a network pickle we can build, or no G_ema.
        OSError: the file cannot be read or downloaded.
    """
    import training.augment  # noqa: F401  (the loader builds registered classes only)
    import training.networks  # noqa: F401
    from patches import network_pickle
    data = network_pickle.load_network_pkl(network_pickle.resolve_resume(network))
    if data['G_ema'] is None:
        raise network_pickle.NetworkPickleError('the pickle holds no G_ema')
    return data['G_ema'].to(device).eval().requires_grad_(False)


def check_ws_shape(G, ws):
    """Raise ValueError unless ws is [K, G.num_ws, G.w_dim] with K >= 1."""
    shape = tuple(np.shape(ws))
    if len(shape) != 3 or shape[0] < 1 or shape[1:] != (G.num_ws, G.w_dim):
        raise ValueError(f'projected w has shape {list(shape)}; the network needs [K, {G.num_ws}, {G.w_dim}]')


def make_label(G, class_idx, batch_size, device):
    """Conditioning labels [batch_size, c_dim]: one-hot of class_idx, or an empty [N, 0] tensor.

    Raises:
        ValueError: class_idx missing for a conditional network, or out of range.
    """
    import torch
    c = torch.zeros([batch_size, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            warnings.warn('--class is ignored: the network is unconditional', stacklevel=2)
        return c
    if class_idx is None:
        raise ValueError(f'the network is conditional (c_dim={G.c_dim}); pass --class=0..{G.c_dim - 1}')
    if not 0 <= class_idx < G.c_dim:
        raise ValueError(f'--class={class_idx} is out of range for c_dim={G.c_dim} (0..{G.c_dim - 1})')
    c[:, class_idx] = 1
    return c


def seed_latents(seeds, z_dim):
    """z for each seed, [len(seeds), z_dim] float32: row i is RandomState(seeds[i]).randn(1, z_dim).

    Drawing each row from its own generator (as upstream does for one seed) makes an image depend on
    its seed only, not on the batch it is rendered in. The float64 draw is cast to float32, which is
    what upstream's mapping network does first with its float64 input.
    """
    import torch
    z = np.concatenate([np.random.RandomState(seed).randn(1, z_dim) for seed in seeds])
    return torch.from_numpy(z.astype(np.float32))


def to_pil(images):
    """[N, C, H, W] float images in about [-1, 1] -> list of PIL images (C=3: 'RGB', C=1: 'L').

    Pixel conversion as upstream: x * 127.5 + 128, clamped to [0, 255], truncated to uint8.
    """
    import torch
    N, C, H, W = images.shape
    if C not in (1, 3):
        raise ValueError(f'cannot save images with {C} channels (need 1 or 3)')
    pixels = (images.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()  # [NHWC]
    if C == 1:
        return [PIL.Image.fromarray(p[:, :, 0], 'L') for p in pixels]
    return [PIL.Image.fromarray(p, 'RGB') for p in pixels]


def _synthesis_kwargs(device, noise_mode):
    # fp16 layers are only a speed-up on CUDA; on CPU run everything in fp32 (half-precision convs
    # are slow or missing there).
    kwargs = dict(noise_mode=noise_mode)
    if device.type != 'cuda':
        kwargs['force_fp32'] = True
    return kwargs


def _batches(items, batch_size):
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


@contextlib.contextmanager
def _seeded_noise(noise_mode, seed, device):
    """With noise_mode='random', draw the noise from torch's RNG seeded by `seed`, leaving the caller's RNG as it was."""
    if noise_mode != 'random':
        yield
        return
    import torch
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


def generate_images(G, seeds, truncation_psi=1.0, noise_mode='const', class_idx=None, batch_size=8, device=None):
    """Render one image per seed.

    Args:
        G:              Generator (G_ema), already on `device` and in eval mode.
        seeds:          Iterable of ints in [0, 2**32).
        truncation_psi: Truncation psi (applied to all layers).
        noise_mode:     'const', 'random' or 'none'. 'random' noise is seeded by the image's seed and
                        rendered one image at a time, so it is reproducible and batch-independent too.
        class_idx:      Class for conditional networks (ignored with a warning otherwise).
        batch_size:     Images per forward pass; the output does not depend on it.
        device:         torch.device; default: the device of G's parameters.

    Yields:
        (seed, PIL.Image) in the order of `seeds`.
    """
    import torch
    seeds = list(seeds)
    if device is None:
        device = next(G.parameters()).device
    if noise_mode == 'random':
        batch_size = 1  # the synthesis layers draw one noise tensor per batch
    label = make_label(G, class_idx, 1, device)  # validates (and warns) once, before any work
    kwargs = _synthesis_kwargs(device, noise_mode)
    for chunk in _batches(seeds, batch_size):
        z = seed_latents(chunk, G.z_dim).to(device)
        with _seeded_noise(noise_mode, chunk[0], device), torch.no_grad():
            img = G(z, label.repeat(len(chunk), 1), truncation_psi=truncation_psi, **kwargs)
        yield from zip(chunk, to_pil(img))


def generate_from_w(G, ws, noise_mode='const', batch_size=8, device=None):
    """Render images from W vectors, e.g. a projector's output.

    Args:
        G:     Generator on `device`.
        ws:    Array or tensor [K, num_ws, w_dim].
        other: as generate_images (noise 'random' is seeded with the row index).

    Yields:
        (row index, PIL.Image).
    """
    import torch
    if device is None:
        device = next(G.parameters()).device
    check_ws_shape(G, ws)
    ws = torch.as_tensor(np.asarray(ws), dtype=torch.float32)
    if noise_mode == 'random':
        batch_size = 1
    kwargs = _synthesis_kwargs(device, noise_mode)
    for start in range(0, len(ws), batch_size):
        chunk = ws[start:start + batch_size].to(device)
        with _seeded_noise(noise_mode, start, device), torch.no_grad():
            img = G.synthesis(chunk, **kwargs)
        yield from zip(range(start, start + len(chunk)), to_pil(img))


def make_grid(images, cols=None):
    """Tile equally sized PIL images row-major into one image (cols default: ceil(sqrt(N))).

    Cells past the last image stay black. Grayscale tiles give an 'L' grid, colour tiles 'RGB'.
    """
    if not images:
        raise ValueError('no images to tile')
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    W, H = images[0].size
    grid = PIL.Image.new(images[0].mode, (cols * W, rows * H))
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * W, (i // cols) * H))
    return grid


def save_png(img, path):
    """Write a PIL image as PNG atomically (a crash never leaves a half-written file)."""
    with dnnlib.util.atomic_open(path, 'wb') as f:
        img.save(f, format='PNG')

# ----------------------------------------------------------------------------
# Command line.


class SeedList(click.ParamType):
    """A click type for integer lists and ranges such as 0-7 or 1,3-5 (seeds, or style_mixing's --styles)."""

    def __init__(self, name='seeds'):
        self.name = name  # the metavar --help shows

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_seeds(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


@cli.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle: path, URL or resume name (e.g. ffhq512).')
@click.option('--seeds', type=SeedList(), help='Seeds, e.g. 0-7, 1,5,9 or 1,3-5 (required unless --projected-w).')
@click.option('--trunc', 'truncation_psi', type=float, default=1, show_default=True, help='Truncation psi.')
@click.option('--class', 'class_idx', type=click.IntRange(min=0), help='Class label (conditional networks only).')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True,
              help='Noise inputs: fixed, per-image random (seeded by the seed), or off.')
@click.option('--projected-w', type=click.Path(exists=True, dir_okay=False),
              help='Render W vectors from a .npz with key w [K, num_ws, w_dim] instead of seeds.')
@click.option('--outdir', required=True, type=click.Path(file_okay=False), help='Where to save the images.')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True,
              help='Where to run: auto = cuda when available, else cpu.')
@click.option('--batch-size', type=click.IntRange(min=1), default=8, show_default=True,
              help='Images per forward pass (does not change the images).')
@click.option('--grid', type=click.Choice(['none', 'also', 'only']), default='none', show_default=True,
              help='Also (or only) write all images tiled into grid.png, row-major, ceil(sqrt(N)) per row.')
@click.option('--grid-cols', type=click.IntRange(min=1), help='Images per grid row (default ceil(sqrt(N))).')
def main(network_pkl, seeds, truncation_psi, class_idx, noise_mode, projected_w, outdir, device, batch_size, grid,
         grid_cols):
    """Generate images with a trained network; files are seed%04d.png (proj%02d.png with --projected-w)."""
    if projected_w is None and not seeds:
        raise click.UsageError('--seeds is required unless --projected-w is given')
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint='--device')

    if not (dnnlib.util.is_url(network_pkl) or os.path.isfile(network_pkl) or _is_resume_name(network_pkl)):
        raise click.BadParameter(f'no such file: {network_pkl}', param_hint='--network')
    try:
        dnnlib.util.check_output_dir(outdir)  # before the (possibly downloaded) network is loaded; writes nothing
    except OSError as err:
        raise click.ClickException(dnnlib.util.os_error_line(err, '--outdir')) from None
    print(f'Loading network from "{network_pkl}"...')
    G = _load_generator_cli(network_pkl, dev)

    # Choose the image source.
    if projected_w is not None:
        if seeds:
            print('warning: --seeds is ignored when --projected-w is given')
        ws = _load_projected_w(projected_w)
        try:
            check_ws_shape(G, ws)
        except ValueError as err:
            raise click.BadParameter(f'{projected_w}: {err}', param_hint='--projected-w')
        records, pattern = generate_from_w(G, ws, noise_mode=noise_mode, batch_size=batch_size, device=dev), 'proj%02d.png'
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # printed below in the CLI's own words
                make_label(G, class_idx, 0, dev)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint='--class')
        if class_idx is not None and G.c_dim == 0:
            print('warning: --class is ignored: the network is unconditional')
        records = generate_images(G, seeds, truncation_psi=truncation_psi, noise_mode=noise_mode,
                                  class_idx=class_idx, batch_size=batch_size, device=dev)
        pattern = 'seed%04d.png'

    try:
        dnnlib.util.ensure_output_dir(outdir)  # only now: a refused network or option leaves no empty folder
        _save_all(records, pattern, outdir, grid, grid_cols)
    except OSError as err:  # e.g. the disk filled up: the file being written is removed, the rest kept
        raise click.ClickException(dnnlib.util.os_error_line(err, '--outdir')) from None


def _save_all(records, pattern, outdir, grid, grid_cols):
    kept = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # already reported above
        for key, img in records:
            if grid != 'only':
                save_png(img, os.path.join(outdir, pattern % key))
                print(f'  {pattern % key}')
            if grid != 'none':
                kept.append(img)
    if kept:
        save_png(make_grid(kept, grid_cols), os.path.join(outdir, 'grid.png'))
        print('  grid.png')


def _load_generator_cli(network_pkl, device):
    """load_generator with its failures as one line naming --network."""
    from patches.network_pickle import NetworkPickleError
    try:
        return load_generator(network_pkl, device)
    except NetworkPickleError as err:
        raise click.ClickException(f'--network {network_pkl}: {err}') from None
    except OSError as err:
        reason = dnnlib.util.os_error_line(err) if err.errno is not None else str(err).splitlines()[0]
        raise click.ClickException(f'--network {network_pkl}: {reason}') from None


def _is_resume_name(name):
    from patches.network_pickle import RESUME_SPECS
    return name in RESUME_SPECS


def _load_projected_w(path):
    try:
        with np.load(path) as data:
            return data['w']
    except KeyError:
        raise click.BadParameter(f'{path} has no array named "w"', param_hint='--projected-w')
    except (OSError, ValueError) as err:
        raise click.BadParameter(f'cannot read {path}: {err}', param_hint='--projected-w')


if __name__ == '__main__':
    main()
