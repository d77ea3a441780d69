"""Style mixing grid (upstream style_mixing.py's options and files).

Examples:
    python style_mixing.py --network=network-snapshot-000100.pkl --rows=85,100,75 --cols=55,821 --outdir=out
    python style_mixing.py --network=ffhq512 --rows=1-3 --cols=10-12 --styles=0-3 --trunc=0.7 --outdir=out

For every (row seed, column seed) pair, the row seed's w is rendered with the W layers listed in --styles
taken from the column seed's w (low indices: coarse styles such as pose; high: colour and texture).

Outputs in --outdir: '{row}-{col}.png' for every pair, '{seed}-{seed}.png' for every seed alone, and
grid.png: the column seeds along the top, the row seeds down the left, the mixes inside, black corner.

Differences from upstream: `--device` (CPU works); grayscale networks; --styles is checked against the
network's W layers; `--noise-mode=random` is seeded per image, so two runs give the same files.
"""

import os

import click
import numpy as np
import PIL.Image

from dnnlib import cli

from generate import SeedList
from projector import load_unconditional, make_outdir, save_png

# torch is imported inside the functions that use it: `--help` and argument errors answer at once.

# ----------------------------------------------------------------------------
# Library functions.


def check_styles(styles, num_ws):
    """Raise ValueError unless every index in `styles` names one of the network's num_ws W layers."""
    bad = [s for s in styles if not 0 <= s < num_ws]
    if bad:
        raise ValueError(f'layer {bad[0]} does not exist: the network has {num_ws} W layers (0-{num_ws - 1})')


def seed_ws(G, seeds, truncation_psi, device):
    """{seed: w [num_ws, w_dim]}: z = RandomState(seed).randn(z_dim), mapped, truncated on all layers."""
    import torch
    z = np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in seeds])
    with torch.no_grad():
        ws = G.mapping(torch.from_numpy(z).to(device), None)
        if truncation_psi != 1:
            ws = G.mapping.w_avg + (ws - G.mapping.w_avg) * truncation_psi
    return dict(zip(seeds, ws))


def mixed_ws(w_dict, row_seeds, col_seeds, styles):
    """{(row, col): w}: the row's w with the layers in `styles` from the column's w; also (s, s) for each seed."""
    out = {(seed, seed): w for seed, w in w_dict.items()}
    for row in row_seeds:
        for col in col_seeds:
            w = w_dict[row].clone()
            w[styles] = w_dict[col][styles]
            out[(row, col)] = w
    return out


def render(G, w, noise_mode, noise_seed, device):
    """PIL image of one w [num_ws, w_dim]; 'random' noise is drawn from torch's RNG seeded by noise_seed."""
    import torch
    kwargs = dict(noise_mode=noise_mode, force_fp32=device.type != 'cuda')  # fp16 only pays off on CUDA
    with torch.no_grad():
        if noise_mode == 'random':  # the caller's RNG state is left as it was
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
                torch.manual_seed(noise_seed)
                img = G.synthesis(w[None].to(device), **kwargs)
        else:
            img = G.synthesis(w[None].to(device), **kwargs)
    pixels = (img[0].permute(1, 2, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()  # [HWC]
    return PIL.Image.fromarray(pixels[:, :, 0], 'L') if pixels.shape[2] == 1 else PIL.Image.fromarray(pixels, 'RGB')


def style_mixing_images(G, row_seeds, col_seeds, styles, truncation_psi=1, noise_mode='const', device=None):
    """{(row, col): PIL image} for every pair and every seed alone (key (seed, seed))."""
    import torch
    device = torch.device(device or next(G.parameters()).device)
    check_styles(styles, G.num_ws)
    w_dict = seed_ws(G, list(dict.fromkeys(row_seeds + col_seeds)), truncation_psi, device)
    # The noise seed depends on the pair only, so an image does not change with the grid around it.
    return {key: render(G, w, noise_mode, key[0] * 2 ** 32 + key[1], device)
            for key, w in mixed_ws(w_dict, row_seeds, col_seeds, styles).items()}


def make_grid(images, row_seeds, col_seeds):
    """(cols + 1) x (rows + 1) cells on black: column seeds along the top, row seeds down the left."""
    W, H = next(iter(images.values())).size
    mode = next(iter(images.values())).mode
    canvas = PIL.Image.new(mode, (W * (len(col_seeds) + 1), H * (len(row_seeds) + 1)), 0)
    for c, col in enumerate(col_seeds, start=1):
        canvas.paste(images[(col, col)], (W * c, 0))
    for r, row in enumerate(row_seeds, start=1):
        canvas.paste(images[(row, row)], (0, H * r))
        for c, col in enumerate(col_seeds, start=1):
            canvas.paste(images[(row, col)], (W * c, H * r))
    return canvas

# ----------------------------------------------------------------------------
# Command line.


def _load(network_pkl, device, styles, truncation_psi):
    """(G, torch device) with one-line errors naming the flag."""
    G, dev = load_unconditional(network_pkl, device, 'style mixing')
    try:
        check_styles(styles, G.num_ws)
    except ValueError as e:
        raise click.ClickException(f'--styles: {e} (the default is 0-6)')
    if truncation_psi != 1 and getattr(G.mapping, 'w_avg', None) is None:
        raise click.ClickException(f'--trunc: {network_pkl} keeps no average w, so it cannot be truncated')
    return G, dev


@cli.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle: path, URL or resume name (e.g. ffhq512).')
@click.option('--rows', 'row_seeds', type=SeedList('range'), required=True, help='Row seeds, e.g. 85,100,75 or 1-3.')
@click.option('--cols', 'col_seeds', type=SeedList('range'), required=True, help='Column seeds, e.g. 55,821 or 10-12.')
@click.option('--styles', 'col_styles', type=SeedList('range'), default='0-6', show_default=True,
              help='W layers taken from the column seed.')
@click.option('--trunc', 'truncation_psi', type=float, default=1, show_default=True, help='Truncation psi (all layers).')
@click.option('--noise-mode', type=click.Choice(['const', 'random', 'none']), default='const', show_default=True,
              help='Noise inputs: fixed, random (seeded per image), or off.')
@click.option('--outdir', required=True, metavar='DIR', help='Where to save the output images.')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True,
              help='Where to run: auto = cuda when available, else cpu.')
def main(network_pkl, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, outdir, device):
    """Style mixing: writes {row}-{col}.png for every pair and seed, and grid.png, to --outdir."""
    G, dev = _load(network_pkl, device, col_styles, truncation_psi)
    make_outdir(outdir)
    print(f'Rendering {len(row_seeds) * len(col_seeds)} mixes of {len(row_seeds)} rows and {len(col_seeds)} columns...')
    images = style_mixing_images(G, row_seeds, col_seeds, col_styles, truncation_psi, noise_mode, dev)
    for (row, col), img in images.items():
        save_png(img, os.path.join(outdir, f'{row}-{col}.png'))
    save_png(make_grid(images, row_seeds, col_seeds), os.path.join(outdir, 'grid.png'))
    print(f'Saved {len(images)} images and grid.png in {outdir}')


if __name__ == '__main__':
    main()
