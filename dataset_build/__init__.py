"""Building datasets: the library behind `dataset_tool.py` (training/dataset.py only reads them).

- `convert`:  upstream's converter (folder / zip / CIFAR-10 / MNIST to a training dataset).
- `study`:    the study's CelebAMask-HQ subsets and generated-image mixes, with manifests.
- `verify`:   re-hash a study set's sources and zip against its manifest.
- `pools`, `selection`: the planning pass (every file fully decoded) and the stable set selection.
- `images`, `archive`, `parallel`, `errors`: decoding, deterministic archives, the interruptible
  worker pool, and one-line error messages.
"""
