"""Upstream compatibility: the safe loader for NVIDIA network pickles (see patches/README.md)."""
