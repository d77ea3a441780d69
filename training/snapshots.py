"""Snapshots at tick ends: fakes<label>.png, network-snapshot-<label>.pkl and the metrics on it."""

import copy
import os

import torch

from patches import network_pickle
from torch_utils import distributed
from training import outputs


class ImageGrid:
    """The fixed grid of reals.png and the latents that render fakes*.png (the same grid after a continue).

    Args:
        training_set: dataset.
        z_dim: generator latent size.
        random_seed: seed of the grid latents' own generator.
        device: where G_ema runs.
        chunk: images per G_ema call.
    """

    def __init__(self, training_set, z_dim, random_seed, device, chunk):
        self.size, self.reals, labels = outputs.setup_snapshot_image_grid(training_set)
        gen = torch.Generator().manual_seed(random_seed)
        self.z = torch.randn([labels.shape[0], z_dim], generator=gen).to(device).split(chunk)
        self.c = torch.from_numpy(labels).to(device).split(chunk)

    def save_reals(self, run_dir):
        outputs.save_image_grid(self.reals, os.path.join(run_dir, 'reals.png'), drange=[0, 255], grid_size=self.size)

    @torch.no_grad()
    def save_fakes(self, G_ema, run_dir, label):
        """fakes<label>.png rendered by G_ema with constant noise."""
        images = [G_ema(z=z, c=c, noise_mode='const').cpu() for z, c in zip(self.z, self.c)]
        outputs.save_image_grid(torch.cat(images).numpy(), os.path.join(run_dir, f'fakes{label}.png'),
                                drange=[-1, 1], grid_size=self.size)


def snapshot_data(modules, training_set_kwargs, cur_nimg, num_gpus):
    """CPU copies of the networks for the pickle and the metrics (the live modules are untouched).

    Args:
        modules: dict name -> module or None (G, D, G_ema, augment_pipe).
        training_set_kwargs: stored in the pickle, as upstream.
        cur_nimg: exact progress (snapshots at kimg points are named by the point).
        num_gpus: > 1 checks that every rank holds the same weights (a collective).
    """
    data = dict(training_set_kwargs=dict(training_set_kwargs))
    for name, module in modules.items():
        if module is not None:
            if num_gpus > 1:
                # Each rank's w_avg follows its own latents, as upstream; everything else must agree.
                distributed.assert_consistent(module, name, ignore_regex=r'.*\.w_avg')
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        data[name] = module
    data['cur_nimg'] = int(cur_nimg)
    return data


def save_network_snapshots(data, run_dir, labels):
    """network-snapshot-<label>.pkl for each label (rank 0); returns the first path."""
    paths = [os.path.join(run_dir, f'network-snapshot-{label}.pkl') for label in labels]
    for path in paths:
        with outputs.naming_errors(path):
            network_pickle.save_network_pkl(path, data)
    return paths[0]
