"""Compatibility shim: `import legacy; legacy.load_network_pkl(f)` works as with stylegan2-ada-pytorch.

The loader lives in patches/network_pickle.py and never executes code stored in a pickle; it builds
classes registered by training.networks and training.augment, so this shim imports both. The TF-era
converter CLI of upstream's legacy.py is not provided (see patches/README.md): running this file says so
in one line.
"""

import training.augment  # noqa: F401  (registers AugmentPipe)
import training.networks  # noqa: F401  (registers the network classes)
from patches.network_pickle import NetworkPickleError, load_network_pkl  # noqa: F401


def main():
    """`python legacy.py ...`: upstream converts TF-era pickles here; we do not (one line, exit 2)."""
    import sys
    print('legacy.py: converting TensorFlow-era pickles is not supported here; PyTorch network pickles load '
          'directly (generate.py, calc_metrics.py, train.py --resume)', file=sys.stderr)
    return 2


if __name__ == '__main__':
    raise SystemExit(main())
