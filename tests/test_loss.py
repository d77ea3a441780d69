"""StyleGAN2Loss: phases, R1 and path-length values, gain linearity, style mixing, state."""

import copy

import pytest
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from training.loss import StyleGAN2Loss, draw_mixing_cutoff, mix_styles

Z_DIM, W_DIM, NUM_WS, RES = 6, 5, 4, 8

# ---------------------------------------------------------------------------------------------
# Tiny stand-in networks with the interfaces the loss relies on (closed-form checks need them to
# be per-sample and free of minibatch statistics).


class TinyMapping(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(Z_DIM, W_DIM)
        self.register_buffer('w_avg', torch.zeros(W_DIM))
        self.calls = []

    def forward(self, z, c, skip_w_avg_update=False):
        self.calls.append(skip_w_avg_update)
        w = torch.tanh(self.fc(z))
        if not skip_w_avg_update:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, 0.995))
        return w[:, None, :].repeat(1, NUM_WS, 1)


class TinySynthesis(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(NUM_WS * W_DIM, 3 * RES * RES)

    def forward(self, ws):
        return torch.tanh(self.fc(ws.flatten(1))).reshape(-1, 3, RES, RES)


class TinyD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * RES * RES, 1)

    def forward(self, img, c):
        return self.fc(F.softplus(self.conv(img)).flatten(1))


def _nets(seed=0):
    torch.manual_seed(seed)
    return TinyMapping(), TinySynthesis(), TinyD()


def _batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand([n, 3, RES, RES], generator=g) * 2 - 1
    z = torch.randn([n, Z_DIM], generator=g)
    c = torch.zeros([n, 0])
    return real, c, z, c


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _has_grad(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


pytestmark = pytest.mark.usefixtures('fresh_training_stats')  # the accumulators are process globals

# ---------------------------------------------------------------------------------------------
# Phases.


@pytest.mark.parametrize('phase,g_grad,names', [
    ('Gmain', True, {'Loss/scores/fake', 'Loss/signs/fake', 'Loss/G/loss'}),
    ('Greg', True, {'Loss/pl_penalty', 'Loss/G/reg'}),
    ('Gboth', True, {'Loss/scores/fake', 'Loss/signs/fake', 'Loss/G/loss', 'Loss/pl_penalty', 'Loss/G/reg'}),
    ('Dmain', False, {'Loss/scores/fake', 'Loss/signs/fake', 'Loss/scores/real', 'Loss/signs/real', 'Loss/D/loss'}),
    ('Dreg', False, {'Loss/scores/real', 'Loss/signs/real', 'Loss/r1_penalty', 'Loss/D/reg'}),
    ('Dboth', False, {'Loss/scores/fake', 'Loss/signs/fake', 'Loss/scores/real', 'Loss/signs/real',
                      'Loss/D/loss', 'Loss/r1_penalty', 'Loss/D/reg'}),
])
def test_phase_gradients_and_stats(phase, g_grad, names):
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D)
    collector = training_stats.Collector(regex='Loss/.*')
    loss.accumulate_gradients(phase, *_batch(), gain=1)
    collector.update()
    assert set(collector.names()) == names
    for name in names:
        assert collector.num(name) > 0 and torch.isfinite(torch.tensor(collector.mean(name)))
    # D phases never touch G (fakes are generated without a graph, reals are detached).
    assert _has_grad(mapping) == g_grad and _has_grad(synthesis) == g_grad
    assert _has_grad(D) == (phase.startswith('D') or phase in ('Gmain', 'Gboth'))
    for module in (mapping, synthesis, D):
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


def test_disabled_regularisers_do_nothing():
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D, r1_gamma=0, pl_weight=0)
    loss.accumulate_gradients('Greg', *_batch(), gain=4)
    loss.accumulate_gradients('Dreg', *_batch(), gain=16)
    assert not _has_grad(mapping) and not _has_grad(synthesis) and not _has_grad(D)


def test_g_loss_is_nonsaturating_logistic():
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D, style_mixing_prob=0)
    collector = training_stats.Collector()
    real, c, z, _ = _batch()
    loss.accumulate_gradients('Gmain', real, c, z, c, gain=1)
    collector.update()
    with torch.no_grad():
        logits = D(synthesis(mapping(z, c)), c)
    assert collector.mean('Loss/scores/fake') == pytest.approx(float(logits.mean()), rel=1e-5)
    assert collector.mean('Loss/G/loss') == pytest.approx(float(F.softplus(-logits).mean()), rel=1e-5)

# ---------------------------------------------------------------------------------------------
# R1.


def _reference_r1_loss(D, real, c, gamma, augment=lambda x: x):
    """Per-sample R1 from an independent per-sample gradient loop."""
    penalties = []
    for i in range(real.shape[0]):
        x = real[i:i + 1].clone().requires_grad_(True)
        g, = torch.autograd.grad(D(augment(x), c[i:i + 1]).sum(), x, create_graph=True)
        penalties.append(g.square().sum())
    penalties = torch.stack(penalties)
    return penalties.detach(), (penalties * gamma / 2).mean()


@pytest.mark.parametrize('scale', [None, 2.0])
def test_r1_matches_independent_computation(scale):
    mapping, synthesis, D = _nets()
    # With an augmentation, R1 is taken w.r.t. the un-augmented reals: the chain rule adds `scale`.
    augment = None if scale is None else (lambda x: x * scale)
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D, augment_pipe=augment, r1_gamma=3.0)
    collector = training_stats.Collector()
    real, c, z, _ = _batch()
    loss.accumulate_gradients('Dreg', real, c, z, c, gain=1)
    collector.update()
    got = _grads(D)

    D_ref = copy.deepcopy(D)
    D_ref.zero_grad(set_to_none=True)
    penalties, ref_loss = _reference_r1_loss(D_ref, real, c, 3.0, augment or (lambda x: x))
    ref_loss.backward()
    assert collector.mean('Loss/r1_penalty') == pytest.approx(float(penalties.mean()), rel=1e-5)
    assert collector.mean('Loss/D/reg') == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    for a, b, param in zip(got, _grads(D_ref), D.parameters()):
        # R1 does not depend on the last bias: the reference leaves it None, the loss (through
        # `logits * 0`) gives it an exact zero.
        b = torch.zeros_like(param) if b is None else b
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_reg_gain_scales_gradient_linearly():
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D)
    batch = _batch()
    loss.accumulate_gradients('Dreg', *batch, gain=1)
    g1 = _grads(D)
    D.zero_grad(set_to_none=True)
    loss.accumulate_gradients('Dreg', *batch, gain=16)
    for a, b in zip(g1, _grads(D)):
        assert torch.allclose(b, 16 * a, rtol=1e-5, atol=1e-8)

    # Path length: same random noise (same seed) and same pl_mean start.
    state = loss.state_dict()
    torch.manual_seed(5)
    loss.accumulate_gradients('Greg', *batch, gain=1)
    g1 = _grads(synthesis)
    synthesis.zero_grad(set_to_none=True)
    loss.load_state_dict(state)
    torch.manual_seed(5)
    loss.accumulate_gradients('Greg', *batch, gain=4)
    for a, b in zip(g1, _grads(synthesis)):
        assert torch.allclose(b, 4 * a, rtol=1e-5, atol=1e-8)

# ---------------------------------------------------------------------------------------------
# Path length.


def _reference_pl_lengths(mapping, synthesis, z, c, seed):
    """|J^T y| per sample, averaged over ws, from explicit Jacobians (no style mixing)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        ws = mapping(z, c)
        img = synthesis(ws)
    noise = torch.randn_like(img) / RES
    lengths = []
    for i in range(z.shape[0]):
        J = torch.autograd.functional.jacobian(lambda w: synthesis(w[None])[0], ws[i])  # [3,R,R,NUM_WS,W]
        g = torch.einsum('chw,chwkd->kd', noise[i], J)
        lengths.append(g.square().sum(1).mean().sqrt())
    return torch.stack(lengths)


def test_pl_mean_update_rule_and_penalty():
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D, style_mixing_prob=0, pl_decay=0.25, pl_batch_shrink=2)
    collector = training_stats.Collector()
    real, c, z, _ = _batch(n=6)
    half = z[:3]  # pl_batch_shrink=2 keeps the first half of the chunk

    expected_mean = torch.zeros([])
    for step, seed in enumerate([11, 12]):
        lengths = _reference_pl_lengths(copy.deepcopy(mapping), synthesis, half, c[:3], seed)
        expected_mean = expected_mean + (lengths.mean() - expected_mean) * 0.25   # lerp
        torch.manual_seed(seed)
        loss.accumulate_gradients('Greg', real, c, z, c, gain=1)
        collector.update()
        assert float(loss.pl_mean) == pytest.approx(float(expected_mean), rel=1e-5)
        assert collector.num('Loss/pl_penalty') == 3
        penalty = (lengths - expected_mean).square()
        assert collector.mean('Loss/pl_penalty') == pytest.approx(float(penalty.mean()), rel=1e-4, abs=1e-9)
        assert collector.mean('Loss/G/reg') == pytest.approx(float(penalty.mean() * 2), rel=1e-4, abs=1e-9)


def test_loss_state_round_trip_continues_identically():
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D)
    batch = _batch()
    for seed in range(3):
        torch.manual_seed(seed)
        loss.accumulate_gradients('Greg', *batch, gain=4)
    assert float(loss.pl_mean) > 0

    # A continued run: fresh loss object over copies of the networks, state restored.
    mapping2, synthesis2, D2 = copy.deepcopy(mapping), copy.deepcopy(synthesis), copy.deepcopy(D)
    resumed = StyleGAN2Loss('cpu', mapping2, synthesis2, D2)
    resumed.load_state_dict(loss.state_dict())
    for module in (mapping, synthesis, mapping2, synthesis2):
        module.zero_grad(set_to_none=True)
    torch.manual_seed(99)
    loss.accumulate_gradients('Greg', *batch, gain=4)
    torch.manual_seed(99)
    resumed.accumulate_gradients('Greg', *batch, gain=4)
    assert float(resumed.pl_mean) == float(loss.pl_mean)
    for a, b in zip(_grads(synthesis), _grads(synthesis2)):
        assert torch.equal(a, b)
    # Without the state the continuation differs (pl_mean restarts at 0, as upstream did).
    fresh = StyleGAN2Loss('cpu', copy.deepcopy(mapping), copy.deepcopy(synthesis), copy.deepcopy(D))
    torch.manual_seed(99)
    fresh.accumulate_gradients('Greg', *batch, gain=4)
    assert float(fresh.pl_mean) != float(loss.pl_mean)

# ---------------------------------------------------------------------------------------------
# Style mixing.


def test_mixing_cutoff_distribution():
    torch.manual_seed(0)
    draws = [int(draw_mixing_cutoff(NUM_WS, 1.0, 'cpu')) for _ in range(300)]
    assert set(draws) == set(range(1, NUM_WS))
    assert all(int(draw_mixing_cutoff(NUM_WS, 0.0, 'cpu')) == NUM_WS for _ in range(20))
    mixed = sum(int(draw_mixing_cutoff(NUM_WS, 0.9, 'cpu')) < NUM_WS for _ in range(2000))
    assert mixed / 2000 == pytest.approx(0.9, abs=0.03)


def test_mix_styles_semantics():
    a = torch.zeros([2, NUM_WS, W_DIM])
    b = torch.ones([2, NUM_WS, W_DIM])
    out = mix_styles(a, b, torch.tensor(2))
    assert torch.equal(out[:, :2], a[:, :2]) and torch.equal(out[:, 2:], b[:, 2:])
    assert torch.equal(mix_styles(a, b, torch.tensor(NUM_WS)), a)


def test_run_g_mixes_once_per_batch_and_skips_w_avg_update():
    mapping, synthesis, D = _nets()
    loss = StyleGAN2Loss('cpu', mapping, synthesis, D, style_mixing_prob=1.0)
    _, c, z, _ = _batch(n=5)
    torch.manual_seed(3)
    _img, ws = loss.run_G(z, c)
    assert mapping.calls == [False, True]   # second mapping call leaves w_avg alone
    with torch.no_grad():
        own = mapping(z, c)
    first = (ws - own).abs().amax(dim=[0, 2]) < 1e-7   # per W index, over the whole batch
    # A prefix [0, cutoff) comes from z and the rest from the fresh latents, same for every sample.
    cutoff = int(first.long().sum())
    assert 1 <= cutoff < NUM_WS
    assert first[:cutoff].all() and not first[cutoff:].any()
    assert torch.equal(ws[:, cutoff:], ws[:, cutoff:cutoff + 1].expand(-1, NUM_WS - cutoff, -1))

# ---------------------------------------------------------------------------------------------
# With the real networks (tiny configuration) and the augmentation pipe.


def test_real_networks_all_phases_with_augmentation():
    from training import networks
    from training.augment import AugmentPipe, augpipe_specs
    torch.manual_seed(0)
    common = dict(z_dim=32, w_dim=32, c_dim=0, img_resolution=32, img_channels=3)
    G = networks.Generator(**common, mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=32))
    D = networks.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=32)
    pipe = AugmentPipe(**augpipe_specs['bgc'])
    pipe.p.fill_(0.5)
    loss = StyleGAN2Loss('cpu', G.mapping, G.synthesis, D, augment_pipe=pipe)
    collector = training_stats.Collector(regex='Loss/.*')
    n = 4
    real = torch.rand([n, 3, 32, 32]) * 2 - 1
    z = torch.randn([n, 32])
    c = torch.zeros([n, 0])
    for phase, module in [('Gmain', G), ('Greg', G), ('Dmain', D), ('Dreg', D)]:
        for m in (G, D):
            m.requires_grad_(m is module)
            m.zero_grad(set_to_none=True)
        loss.accumulate_gradients(phase, real, c, z, c, gain=4 if phase.endswith('reg') else 1)
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), phase
    collector.update()
    assert len(collector.names()) == 10
    assert all(torch.isfinite(torch.tensor(v.mean)) for v in collector.as_dict().values())
    assert float(loss.pl_mean) > 0
