"""fma(a, b, c) = a * b + c with broadcasting; gradients reduce to each input's shape."""

import pytest
import torch

from torch_utils.ops.fma import fma


@pytest.mark.parametrize('shapes', [([2, 3, 4], [2, 3, 4], [2, 3, 4]),   # same shape
                                    ([2, 1, 4], [1, 3, 1], [4]),          # all broadcast
                                    ([3, 1], [3, 5], [1])])
def test_value_and_gradients(shapes):
    g = torch.Generator().manual_seed(0)
    a, b, c = [torch.randn(s, dtype=torch.float64, generator=g, requires_grad=True) for s in shapes]
    y = fma(a, b, c)
    torch.testing.assert_close(y, a * b + c)
    dy = torch.randn(y.shape, dtype=torch.float64, generator=g)
    ga, gb, gc = torch.autograd.grad(y, [a, b, c], dy)
    # Closed forms: d/da = dy*b, d/db = dy*a, d/dc = dy, each summed over the broadcast dimensions.
    for grad, full, inp in [(ga, dy * b, a), (gb, dy * a, b), (gc, dy, c)]:
        assert grad.shape == inp.shape
        torch.testing.assert_close(grad, full.sum_to_size(inp.shape))


def test_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(1)
    a = torch.randn([2, 1, 3], dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn([1, 4, 3], dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randn([3], dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(fma, [a, b, c])
    assert torch.autograd.gradgradcheck(fma, [a, b, c])
