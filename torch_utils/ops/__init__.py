"""Custom ops: each has a pure-PyTorch reference (always available) and an optional CUDA kernel.

The CUDA kernels are an accelerator, never a requirement: they are compiled lazily the first time a CUDA
tensor reaches an op with impl='auto' or impl='cuda'. See torch_utils/custom_ops.py.
"""
