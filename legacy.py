"""Compatibility shim: `import legacy; legacy.load_network_pkl(f)` works as with stylegan2-ada-pytorch.

The loader lives in patches/network_pickle.py and never executes code stored in a pickle; it builds
classes registered by training.networks and training.augment, so this shim imports both. The TF-era
converter CLI of upstream's legacy.py is not provided (see patches/README.md).
"""

import training.augment  # noqa: F401  (registers AugmentPipe)
import training.networks  # noqa: F401  (registers the network classes)
from patches.network_pickle import NetworkPickleError, load_network_pkl  # noqa: F401
