"""The loop's state objects: closed-form updates, and behaviour after a state_dict round trip."""

import math

import pytest
import torch

from training import ada as ada_lib
from training.counters import Counters
from training.ema import Ema


class _Pipe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer('p', torch.zeros([]))


def test_adjusted_p_closed_form():
    step = 64 * 4 / (500 * 1000)  # 0.000512: batch 64 x interval 4 over ada_kimg 500
    assert ada_lib.adjusted_p(0.1, 0.8, 0.6, 64, 4, 500) == pytest.approx(0.1 + step)
    assert ada_lib.adjusted_p(0.1, 0.2, 0.6, 64, 4, 500) == pytest.approx(0.1 - step)
    assert ada_lib.adjusted_p(0.0, 0.2, 0.6, 64, 4, 500) == 0.0                 # floored at 0
    assert ada_lib.adjusted_p(0.3, 0.6, 0.6, 64, 4, 500) == 0.3                 # sign(0) = 0
    assert ada_lib.adjusted_p(1.5, 0.9, 0.6, 64, 4, 500) == pytest.approx(1.5 + step)  # no cap by default
    assert ada_lib.adjusted_p(0.9999, 0.9, 0.6, 64, 4, 500, p_max=1.0) == 1.0
    assert ada_lib.adjusted_p(0.2, float('nan'), 0.6, 64, 4, 500) == 0.2
    # p travels 1.0 in ada_kimg thousand images.
    p = 0.0
    for _ in range(1000):  # 1000 adjustments of 64 * 4 images = 256 kimg
        p = ada_lib.adjusted_p(p, 1.0, 0.6, 64, 4, 256)
    assert p == pytest.approx(1.0, abs=1e-9)


def _report_signs(values):
    from torch_utils import training_stats
    training_stats.report(ada_lib.SIGN_STAT, torch.tensor(values, dtype=torch.float32))


def test_ada_controller_owns_p_in_the_pipe_and_survives_a_checkpoint():
    """Signs pending at a checkpoint count in the next adjustment, after a reload into a fresh controller."""
    pipe = _Pipe()
    ada = ada_lib.AdaController(pipe, target=0.0, interval=2, ada_kimg=0.008, batch_size=4)
    _report_signs([1, 1, 1, 1])
    ada.after_step(1)                                  # not an adjustment step
    assert ada.p == 0.0
    ada.after_step(2)                                  # r_t = 1 > 0: p += 4 * 2 / 8 = 1.0
    assert ada.p == 1.0 and float(pipe.p) == 1.0
    _report_signs([-1, -1, -1])                        # pending when the checkpoint is written
    ada.fold_pending()
    state = ada.state_dict()
    assert state == dict(p=1.0, carry=[3.0, -3.0])
    pipe2 = _Pipe()
    ada2 = ada_lib.AdaController(pipe2, target=0.0, interval=2, ada_kimg=0.008, batch_size=4)
    ada2.load_state_dict(state)
    _report_signs([1])                                 # r_t = (-3 + 1) / 4 < 0: p -= 1.0
    ada2.after_step(4)
    assert float(pipe2.p) == 0.0


def test_ema_beta_closed_form_and_update():
    G, G_ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema = Ema(G, G_ema, ema_kimg=0.004, ema_rampup=0.5)
    assert ema.beta(cur_nimg=1000, batch_size=4) == pytest.approx(0.5)           # half-life 4 images
    assert ema.beta(cur_nimg=4, batch_size=4) == pytest.approx(0.5 ** (4 / 2))    # ramp-up: 4 * 0.5 images
    with torch.no_grad():
        G.weight.fill_(1.0)
        G_ema.weight.fill_(0.0)
    ema.update(cur_nimg=1000, batch_size=4)
    assert torch.allclose(G_ema.weight, torch.full([2, 2], 0.5))
    assert math.isclose(Ema(G, G_ema, ema_kimg=10).beta(0, 32), 0.5 ** (32 / 10000))


def test_counters_due_points_and_round_trip():
    c = Counters(cur_nimg=40, cur_tick=3, batch_idx=10, tick_start_nimg=32, points_done=[0.02])
    assert c.due_points((0.02, 0.04, 0.06)) == [0.04]
    d = Counters()
    d.load_state_dict(c.state_dict())
    assert d == c and d.due_points((0.02, 0.04, 0.06)) == [0.04]
