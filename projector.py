"""Project an image into the W space of a trained generator (upstream projector.py's options and files).

Examples:
    python projector.py --network=network-snapshot-000100.pkl --target=face.png --outdir=out
    python projector.py --network=ffhq512 --target=face.jpg --num-steps=200 --save-video=false --device=cpu --outdir=out

Method (upstream's): start from the mean w and optimise one w (shared by all layers) together with every
noise_const map of the synthesis network, with Adam, to minimise the LPIPS distance (NVIDIA's vgg16.pt)
between the target and the generated image, plus a penalty on spatially correlated noise. The
learning rate ramps up over the first 5% of the steps and down (cosine) over the last 25%; Gaussian
noise added to w fades out over the first 75%.

Outputs in --outdir: target.png (the cropped, resized target), proj.png, projected_w.npz (key 'w',
float32 [1, num_ws, w_dim], what `generate.py --projected-w` reads) and, when imageio and imageio-ffmpeg
are installed, proj.mp4 (target | projection at every step).

Differences from upstream: `--device` (CPU works, slowly); grayscale networks; the random draws come from
a generator seeded by --seed instead of the global RNGs.
"""

import copy
import io
import os
import pickle
import zipfile

import click
import numpy as np
import PIL.Image

import dnnlib
from dnnlib import cli

# torch and metrics.vgg16 (which needs torch) are imported inside the functions that use them:
# `--help` and argument errors answer at once.

# ----------------------------------------------------------------------------
# Inputs.


def load_generator(network_pkl, device):
    """G_ema of a network pickle (path, URL or resume name), checked to have a mapping network.

    Raises:
        ValueError: one line saying why the pickle cannot be used.
    """
    from patches import network_pickle  # lazy: keeps `--help` and argument errors fast
    try:
        data = network_pickle.load_network_pkl(network_pkl)
    except (OSError, ValueError, EOFError, TypeError, KeyError, pickle.UnpicklingError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f'cannot load {network_pkl}: {reason}') from e
    G = data.get('G_ema')
    if G is None:
        raise ValueError(f'{network_pkl} holds no generator (G_ema is missing)')
    mapping = getattr(G, 'mapping', None)
    if mapping is None or getattr(mapping, 'num_ws', None) is None or not hasattr(G, 'synthesis'):
        raise ValueError(f'{network_pkl}: the generator has no mapping network to W (z -> [num_ws, w_dim])')
    return G.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------
# The optimisation (pure pieces first).


def learning_rate(step, num_steps, initial_learning_rate=0.1, lr_rampdown_length=0.25, lr_rampup_length=0.05):
    """Adam's learning rate at `step`: a linear warm-up and a cosine ramp-down at the end."""
    t = step / num_steps
    ramp = min(1.0, (1.0 - t) / lr_rampdown_length)
    ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
    ramp = ramp * min(1.0, t / lr_rampup_length)
    return initial_learning_rate * ramp


def w_noise_scale(step, num_steps, w_std, initial_noise_factor=0.05, noise_ramp_length=0.75):
    """Std of the Gaussian noise added to w at `step`; falls quadratically to 0 at noise_ramp_length."""
    t = step / num_steps
    return w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2


def noise_regularization(noise_maps):
    """Sum over maps and scales (2x2 average pooling down to 8 px) of squared one-pixel autocorrelations.

    White noise scores about 0; the penalty stops the noise maps from learning image structure.
    """
    import torch
    reg = 0.0
    for noise in noise_maps:
        noise = noise[None, None, :, :]  # [1, 1, H, W]
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = torch.nn.functional.avg_pool2d(noise, kernel_size=2)
    return reg


def normalize_noise_(noise_maps):
    """Rescale every map to zero mean and unit variance, in place."""
    import torch
    with torch.no_grad():  # the maps are leaf tensors that require grad
        for buf in noise_maps:
            buf -= buf.mean()
            buf *= buf.square().mean().rsqrt()


def w_statistics(G, num_samples, device):
    """(w_avg [1, 1, w_dim], w_std) of num_samples mapped z from RandomState(123), as upstream.

    w_std is a scalar radius, sqrt(E||w - w_avg||^2), not a per-dimension deviation.
    """
    import torch
    z = torch.from_numpy(np.random.RandomState(123).randn(num_samples, G.z_dim)).to(device)
    with torch.no_grad():
        w = torch.cat([G.mapping(chunk, None)[:, :1, :].cpu() for chunk in z.split(4096)]).to(torch.float64)
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / num_samples).sqrt())
    return w_avg.to(torch.float32).to(device), w_std


def lpips_input(images_0_255):
    """Float images in [0, 255] -> at most 256 px (area downsampling, as upstream)."""
    import torch
    from metrics import vgg16
    size = vgg16.LPIPS_MAX_SIZE
    if images_0_255.shape[2] > size:
        images_0_255 = torch.nn.functional.interpolate(images_0_255, size=(size, size), mode='area')
    return images_0_255


def _fresh_noise_maps(G, gen):
    """G's noise_const buffers, refilled with N(0, 1) from `gen` and made trainable (G must be a copy)."""
    import torch
    maps = [buf for name, buf in G.synthesis.named_buffers() if name.endswith('noise_const')]
    for buf in maps:
        buf.copy_(torch.randn(buf.shape, generator=gen, device=buf.device)).requires_grad_(True)
    return maps


def _synthesis_kwargs(device):
    import torch
    # fp16 layers are a speed-up on CUDA only; on the CPU everything runs in fp32.
    return dict(noise_mode='const', force_fp32=torch.device(device).type != 'cuda')


def _loss(G, vgg, ws, target_features, noise_maps, regularize_noise_weight):
    """(LPIPS distance, total loss) of the image of ws [1, num_ws, w_dim]."""
    from metrics import vgg16
    synth = (G.synthesis(ws, **_synthesis_kwargs(ws.device)) + 1) * (255 / 2)
    dist = (target_features - vgg16.lpips_features(vgg, lpips_input(synth))).square().sum()
    return dist, dist + noise_regularization(noise_maps) * regularize_noise_weight


def project(G, target, *, num_steps=1000, w_avg_samples=10000, initial_learning_rate=0.1, initial_noise_factor=0.05,
            lr_rampdown_length=0.25, lr_rampup_length=0.05, noise_ramp_length=0.75, regularize_noise_weight=1e5,
            verbose=False, device, vgg=None, seed=303):
    """Find the w whose image is closest (LPIPS) to `target`.

    Args:
        G: generator (not modified: a copy is optimised).
        target: uint8-range tensor [C, H, W] with C = G.img_channels and H = W = G.img_resolution.
        num_steps ... regularize_noise_weight: upstream's schedule constants (see learning_rate etc.).
        verbose: show a progress bar with the current distance.
        device: torch device.
        vgg: the VGG16 network (default: metrics.vgg16.load_vgg16(device)).
        seed: seeds the noise maps' initialisation and the noise added to w.

    Returns:
        float32 tensor [num_steps, num_ws, w_dim] on the CPU: w after every step (the last row is the result).
    """
    import torch
    import tqdm
    from metrics import vgg16
    assert tuple(target.shape) == (G.img_channels, G.img_resolution, G.img_resolution), f'bad target {list(target.shape)}'
    device = torch.device(device)
    vgg = vgg or vgg16.load_vgg16(device)
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    gen = torch.Generator(device).manual_seed(seed)
    w_avg, w_std = w_statistics(G, w_avg_samples, device)
    with torch.no_grad():
        target_features = vgg16.lpips_features(vgg, lpips_input(target[None].to(device).to(torch.float32)))

    w_opt = w_avg.clone().requires_grad_(True)  # [1, 1, w_dim], broadcast to every layer
    noise_maps = _fresh_noise_maps(G, gen)
    optimizer = torch.optim.Adam([w_opt] + noise_maps, betas=(0.9, 0.999), lr=initial_learning_rate)
    w_out = torch.zeros([num_steps, 1, G.w_dim], dtype=torch.float32)
    bar = tqdm.tqdm(range(num_steps), desc='Projecting', unit='step', disable=not verbose)
    for step in bar:
        lr = learning_rate(step, num_steps, initial_learning_rate, lr_rampdown_length, lr_rampup_length)
        for group in optimizer.param_groups:
            group['lr'] = lr
        sigma = w_noise_scale(step, num_steps, w_std, initial_noise_factor, noise_ramp_length)
        ws = (w_opt + torch.randn(w_opt.shape, generator=gen, device=device) * sigma).repeat([1, G.num_ws, 1])
        dist, loss = _loss(G, vgg, ws, target_features, noise_maps, regularize_noise_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix_str(f'dist {dist.item():.4f} loss {loss.item():.4f}', refresh=False)
        w_out[step] = w_opt.detach()[0].cpu()
        normalize_noise_(noise_maps)
    bar.close()
    return w_out.repeat([1, G.num_ws, 1])

# ----------------------------------------------------------------------------
# Outputs.


def synthesize_uint8(G, ws, device):
    """[H, W, C] uint8 image of ws [1, num_ws, w_dim] with G's own noise maps (the optimised ones are
    dropped, as upstream), converted as upstream's projector: (x + 1) * 127.5, clamped, truncated."""
    import torch
    with torch.no_grad():
        img = G.synthesis(ws.to(device), **_synthesis_kwargs(device))
    return ((img[0].permute(1, 2, 0) + 1) * (255 / 2)).clamp(0, 255).to(torch.uint8).cpu().numpy()


def to_pil(pixels):
    """[H, W, C] uint8 -> PIL image, 'RGB' for 3 channels and 'L' for 1."""
    return PIL.Image.fromarray(pixels[:, :, 0], 'L') if pixels.shape[2] == 1 else PIL.Image.fromarray(pixels, 'RGB')


def write_atomic(path, write):
    """Write `path` through write(binary file) atomically, with the permissions open() would give."""
    with dnnlib.util.atomic_open(path, 'wb') as f:
        write(f)


def save_png(img, path):
    write_atomic(path, lambda f: img.save(f, format='PNG'))


def save_projected_w(path, w):
    """np.savez-compatible file with key 'w', but byte-reproducible: np.savez stamps the current time
    into its zip entry, so two identical runs would differ."""
    npy = io.BytesIO()
    np.lib.format.write_array(npy, np.ascontiguousarray(w, dtype=np.float32))
    entry = zipfile.ZipInfo('w.npy', date_time=(1980, 1, 1, 0, 0, 0))

    def write(f):
        with zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) as z:
            z.writestr(entry, npy.getvalue())
    write_atomic(path, write)


def video_writer_module():
    """imageio when it and its ffmpeg plug-in are installed, else None."""
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401  (imageio needs it for mp4)
    except ImportError:
        return None
    return imageio


def write_video(path, frames, imageio):
    """Write RGB uint8 [H, W, 3] frames as an H.264 mp4 at 10 fps (upstream's settings), atomically."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f'.{name}.{os.getpid()}.tmp.mp4')  # the .mp4 suffix picks imageio's format
    try:
        writer = imageio.get_writer(tmp, mode='I', fps=10, codec='libx264', bitrate='16M')
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        os.chmod(tmp, dnnlib.util.new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _video_frames(G, target_pixels, w_steps, device):
    rgb = lambda p: np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p  # noqa: E731
    for w in w_steps:
        yield np.concatenate([rgb(target_pixels), rgb(synthesize_uint8(G, w[None], device))], axis=1)

# ----------------------------------------------------------------------------
# Command line.


def read_image(path):
    """Open an image file as RGB. Raises ValueError (one line) when missing or unreadable."""
    if not os.path.isfile(path):
        raise ValueError(f'no such file: {path}')
    try:
        with PIL.Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f'{path} is not an image that PIL can read ({type(e).__name__})') from e


def prepare_target(img, resolution, channels=3):
    """Upstream's target preparation: centre square crop, LANCZOS resize; 'L' for 1-channel networks."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((resolution, resolution), PIL.Image.LANCZOS)
    return img.convert('L') if channels == 1 else img


def make_outdir(outdir):
    """Create --outdir (and parents). Raises click.ClickException when that is impossible."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise click.ClickException(f'--outdir: {outdir} is a file, not a directory')
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f'--outdir: cannot create {outdir} ({e.strerror or e})')


def load_unconditional(network_pkl, device, task):
    """(G_ema, torch device) of an unconditional network, or a one-line click error naming the flag."""
    from generate import resolve_device
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise click.ClickException(f'--device: {e}')
    print(f'Loading network from "{network_pkl}"...')
    try:
        G = load_generator(network_pkl, dev)
    except ValueError as e:
        raise click.ClickException(f'--network: {e}')
    if G.c_dim != 0:
        raise click.ClickException(f'--network: {network_pkl} is conditional (c_dim={G.c_dim}); '
                                   f'{task} supports unconditional networks only')
    return G, dev


def _setup(network_pkl, target_fname, device):
    """(G, target PIL image, VGG16) or a one-line click error naming the flag."""
    from metrics import vgg16
    try:
        target = read_image(target_fname)
    except ValueError as e:
        raise click.ClickException(f'--target: {e}')
    G, dev = load_unconditional(network_pkl, device, 'projection')
    try:
        vgg = vgg16.load_vgg16(dev)
    except vgg16.detector.DetectorUnavailable as e:
        raise click.ClickException(str(e))
    return G, prepare_target(target, G.img_resolution, G.img_channels), vgg


@cli.command()
@click.option('--network', 'network_pkl', required=True, help='Network pickle: path, URL or resume name (e.g. ffhq512).')
@click.option('--target', 'target_fname', required=True, metavar='FILE',
              help='Target image (centre-cropped to a square and resized to the network\'s resolution).')
@click.option('--num-steps', type=click.IntRange(min=1), default=1000, show_default=True, help='Optimisation steps.')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=303, show_default=True, help='Random seed.')
@click.option('--save-video', type=bool, default=True, show_default=True,
              help='Write proj.mp4 of the optimisation (needs imageio and imageio-ffmpeg).')
@click.option('--outdir', required=True, metavar='DIR', help='Where to save the output files.')
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True,
              help='Where to run: auto = cuda when available, else cpu.')
def main(network_pkl, target_fname, num_steps, seed, save_video, outdir, device):
    """Project an image into W: writes target.png, proj.png and projected_w.npz (and proj.mp4) to --outdir."""
    import torch
    G, target, vgg = _setup(network_pkl, target_fname, device)
    dev = vgg.device
    imageio = video_writer_module() if save_video else None
    if save_video and imageio is None:
        print('proj.mp4 will not be written: no video writer installed (pip install imageio imageio-ffmpeg)')
    make_outdir(outdir)

    target_pixels = np.asarray(target, dtype=np.uint8).reshape(G.img_resolution, G.img_resolution, -1)
    target_tensor = torch.from_numpy(target_pixels.transpose(2, 0, 1).copy())
    w_steps = project(G, target_tensor, num_steps=num_steps, device=dev, vgg=vgg, seed=seed, verbose=True)

    save_png(target, os.path.join(outdir, 'target.png'))
    save_png(to_pil(synthesize_uint8(G, w_steps[-1:], dev)), os.path.join(outdir, 'proj.png'))
    save_projected_w(os.path.join(outdir, 'projected_w.npz'), w_steps[-1:].numpy())
    written = ['target.png', 'proj.png', 'projected_w.npz']
    if imageio is not None:
        print(f'Writing proj.mp4 ({num_steps} frames)...')
        write_video(os.path.join(outdir, 'proj.mp4'), _video_frames(G, target_pixels, w_steps, dev), imageio)
        written.append('proj.mp4')
    print(f'Saved {", ".join(written)} in {outdir}')


if __name__ == '__main__':
    main()
