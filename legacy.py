"""Compatibility shim: `import legacy; legacy.load_network_pkl(f)` works as with stylegan2-ada-pytorch.

The loader lives in patches/network_pickle.py and never executes code stored in a pickle. The TF-era
converter CLI of upstream's legacy.py is not provided (see patches/README.md).
"""

from patches.network_pickle import load_network_pkl  # noqa: F401
