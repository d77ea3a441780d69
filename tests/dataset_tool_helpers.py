"""Small pieces the dataset-tool tests share: invoking the CLI, noise images, saving images."""

import os

import numpy as np
import PIL.Image
from click.testing import CliRunner

import dataset_tool


def run(*args):
    """dataset_tool.py in-process with `args` (stringified); exceptions propagate."""
    return CliRunner().invoke(dataset_tool.main, [str(a) for a in args], catch_exceptions=False)


def noise(shape, seed):
    """uint8 noise image of `shape`, reproducible from `seed`."""
    return np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)


def save(path, img, **kwargs):
    """Save a PIL image or uint8 array at `path`, creating its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    (img if isinstance(img, PIL.Image.Image) else PIL.Image.fromarray(img)).save(path, **kwargs)
