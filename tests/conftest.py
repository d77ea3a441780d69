"""Shared pytest set-up: the device under test and the gpu marker."""

import os
import sys

import pytest

# Tests import the project from the repository root, like the root scripts do.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when no CUDA device exists (CPU CI still runs every reference test)."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    """Device for tests that can run anywhere: $TEST_DEVICE, else cuda when present, else cpu."""
    import torch
    name = os.environ.get('TEST_DEVICE') or ('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


@pytest.fixture
def fresh_training_stats():
    """Empty torch_utils.training_stats accumulators (process globals) before and after a test."""
    from torch_utils import training_stats

    def clear():
        training_stats._pending.clear()
        training_stats._cumulative.clear()
    clear()
    yield
    clear()
