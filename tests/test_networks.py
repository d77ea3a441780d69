"""training.networks and torch_utils.{misc,persistence}: upstream names/shapes/counts, layer math, forward/backward.

Expected parameter lists are generated here from upstream's documented naming and shape rules, not by
reading the implementation; the counts are the verified upstream totals.
"""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils import misc
from torch_utils import persistence
from training import networks

# ----------------------------------------------------------------------------
# Helpers.


def _to_double(module):
    """module.double(), keeping the FIR filter buffers float32 as the ops require."""
    module = module.double()
    for mod in module.modules():
        if getattr(mod, 'resample_filter', None) is not None:
            mod.resample_filter = mod.resample_filter.float()
    return module


def _numel(module):
    return sum(p.numel() for p in module.parameters())


def _tiny_G(c_dim=0, architecture='skip', res=32, num_fp16_res=0, img_channels=3, **synthesis_kwargs):
    torch.manual_seed(0)
    return networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=res, img_channels=img_channels,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=256, channel_max=16, architecture=architecture,
                                                    num_fp16_res=num_fp16_res, conv_clamp=256, **synthesis_kwargs))


def _tiny_D(c_dim=0, architecture='resnet', res=32, num_fp16_res=0, **kwargs):
    torch.manual_seed(1)
    return networks.Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, architecture=architecture,
                                  channel_base=256, channel_max=16, num_fp16_res=num_fp16_res, conv_clamp=256,
                                  mapping_kwargs=dict(num_layers=2), **kwargs)


def _paper512():
    G = networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=512, img_channels=3,
                           mapping_kwargs=dict(num_layers=8),
                           synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256))
    D = networks.Discriminator(c_dim=0, img_resolution=512, img_channels=3, channel_base=32768, channel_max=512,
                               num_fp16_res=4, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=8))
    return G, D


def _channels(res, base=32768, cmax=512):
    return min(base // res, cmax)


def _expected_G_listing(img_res=512, w_dim=512, img_channels=3, num_layers=8):
    """(params, buffers) as [(name, shape)] for a skip-architecture G, from upstream's naming rules."""
    params, buffers = [], []
    for res in [2 ** i for i in range(2, int(np.log2(img_res)) + 1)]:
        out_ch = _channels(res)
        b = f'synthesis.b{res}'
        buffers.append((f'{b}.resample_filter', [4, 4]))
        if res == 4:
            params.append((f'{b}.const', [out_ch, 4, 4]))
            convs = [('conv1', out_ch, out_ch)]
        else:
            in_ch = _channels(res // 2)
            convs = [('conv0', in_ch, out_ch), ('conv1', out_ch, out_ch)]
        for conv, cin, cout in convs:
            params += [(f'{b}.{conv}.weight', [cout, cin, 3, 3]), (f'{b}.{conv}.noise_strength', []),
                       (f'{b}.{conv}.bias', [cout]), (f'{b}.{conv}.affine.weight', [cin, w_dim]),
                       (f'{b}.{conv}.affine.bias', [cin])]
            buffers += [(f'{b}.{conv}.resample_filter', [4, 4]), (f'{b}.{conv}.noise_const', [res, res])]
        params += [(f'{b}.torgb.weight', [img_channels, out_ch, 1, 1]), (f'{b}.torgb.bias', [img_channels]),
                   (f'{b}.torgb.affine.weight', [out_ch, w_dim]), (f'{b}.torgb.affine.bias', [out_ch])]
    for idx in range(num_layers):
        params += [(f'mapping.fc{idx}.weight', [w_dim, w_dim]), (f'mapping.fc{idx}.bias', [w_dim])]
    buffers.append(('mapping.w_avg', [w_dim]))
    return params, buffers


def _expected_D_listing(img_res=512):
    """(params, buffers) for a resnet D, from upstream's naming rules."""
    params, buffers = [], []
    for res in [2 ** i for i in range(int(np.log2(img_res)), 2, -1)]:
        tmp, out = _channels(res), _channels(res // 2)
        b = f'b{res}'
        buffers.append((f'{b}.resample_filter', [4, 4]))
        layers = [('fromrgb', [tmp, 3, 1, 1], True)] if res == img_res else []
        layers += [('conv0', [tmp, tmp, 3, 3], True), ('conv1', [out, tmp, 3, 3], True),
                   ('skip', [out, tmp, 1, 1], False)]
        for name, shape, has_bias in layers:
            params.append((f'{b}.{name}.weight', shape))
            if has_bias:
                params.append((f'{b}.{name}.bias', [shape[0]]))
            buffers.append((f'{b}.{name}.resample_filter', [4, 4]))
    c4 = _channels(4)
    params += [('b4.conv.weight', [c4, c4 + 1, 3, 3]), ('b4.conv.bias', [c4]), ('b4.fc.weight', [c4, c4 * 16]),
               ('b4.fc.bias', [c4]), ('b4.out.weight', [1, c4]), ('b4.out.bias', [1])]
    buffers.append(('b4.conv.resample_filter', [4, 4]))
    return params, buffers


def _listing(module):
    params = [(n, list(t.shape)) for n, t in module.named_parameters()]
    buffers = [(n, list(t.shape)) for n, t in module.named_buffers()]
    return params, buffers


# ----------------------------------------------------------------------------
# Names, shapes, registration order and totals (no forward at large sizes).


def test_paper512_names_shapes_order_and_totals():
    G, D = _paper512()
    assert _listing(G) == _expected_G_listing()
    assert _listing(D) == _expected_D_listing()
    assert _numel(G) == 30_276_583 and len(list(G.parameters())) == 124 and len(list(G.buffers())) == 39
    assert _numel(D) == 28_982_849 and len(list(D.parameters())) == 43 and len(list(D.buffers())) == 30
    # Every stored tensor is float32, fp16 or not (fp16 layers cast at run time).
    assert all(t.dtype == torch.float32 for _, t in misc.named_params_and_buffers(G) + misc.named_params_and_buffers(D))
    # fp16 on the top 4 resolutions: 64..512.
    assert [r for r in G.synthesis.block_resolutions if getattr(G.synthesis, f'b{r}').use_fp16] == [64, 128, 256, 512]
    assert [r for r in D.block_resolutions if getattr(D, f'b{r}').use_fp16] == [512, 256, 128, 64]


@pytest.mark.parametrize('cfg, g_total, d_total', [
    (dict(res=1024, base=32768, c_dim=0, map=8, d_arch='resnet'), 30_370_060, 29_012_513),
    (dict(res=256, base=16384, c_dim=0, map=8, d_arch='resnet'), 24_767_458, 24_001_089),
    (dict(res=32, base=32768, c_dim=10, map=2, d_arch='orig'), 20_215_315, 23_089_664),
])
def test_verified_variant_totals(cfg, g_total, d_total):
    G = networks.Generator(z_dim=512, c_dim=cfg['c_dim'], w_dim=512, img_resolution=cfg['res'], img_channels=3,
                           mapping_kwargs=dict(num_layers=cfg['map']),
                           synthesis_kwargs=dict(channel_base=cfg['base'], channel_max=512))
    assert _numel(G) == g_total
    del G
    D = networks.Discriminator(c_dim=cfg['c_dim'], img_resolution=cfg['res'], img_channels=3,
                               architecture=cfg['d_arch'], channel_base=cfg['base'], channel_max=512)
    assert _numel(D) == d_total


def test_conditional_variants_names():
    G = networks.Generator(z_dim=512, c_dim=7, w_dim=512, img_resolution=8, img_channels=3)
    shapes = dict(_listing(G)[0])
    assert shapes['mapping.embed.weight'] == [512, 7] and shapes['mapping.embed.bias'] == [512]
    assert shapes['mapping.fc0.weight'] == [512, 1024]
    D = networks.Discriminator(c_dim=7, img_resolution=8, img_channels=3)
    params, buffers = _listing(D)
    shapes = dict(params)
    assert shapes['mapping.embed.weight'] == [512, 7] and shapes['mapping.embed.bias'] == [512]
    assert [n for n, _ in params if n.startswith('mapping.fc')] == [f'mapping.fc{i}.{k}' for i in range(8)
                                                                    for k in ('weight', 'bias')]
    assert shapes['mapping.fc7.weight'] == [512, 512]
    assert shapes['b4.out.weight'] == [512, 512] and shapes['b4.out.bias'] == [512]
    assert not any('w_avg' in n for n, _ in buffers)
    assert D.mapping.fc0.weight_gain == pytest.approx(0.01 / np.sqrt(512))  # lr_multiplier 0.01 by default


def test_architecture_variants_names():
    D = _tiny_D(architecture='orig')
    names = [n for n, _ in D.named_parameters()]
    assert [n for n in names if 'fromrgb' in n] == ['b32.fromrgb.weight', 'b32.fromrgb.bias']
    assert not any('.skip.' in n for n in names)
    D = _tiny_D(architecture='skip')
    names = [n for n, _ in D.named_parameters()]
    assert sorted({n.split('.')[0] for n in names if 'fromrgb' in n}) == sorted(['b32', 'b16', 'b8', 'b4'])
    assert not any('.skip.' in n for n in names)
    for arch in ('resnet', 'orig'):
        G = _tiny_G(architecture=arch)
        params, buffers = _listing(G)
        assert [n for n, _ in params if 'torgb.weight' in n] == ['synthesis.b32.torgb.weight']
        skips = [n for n, _ in params if '.skip.' in n]
        assert skips == ([f'synthesis.b{r}.skip.weight' for r in (8, 16, 32)] if arch == 'resnet' else [])
        if arch == 'resnet':
            assert ('synthesis.b8.skip.resample_filter', [4, 4]) in buffers
            assert dict(params)['synthesis.b16.skip.weight'] == [16, 16, 1, 1]


def test_freeze_layers_become_buffers():
    # Layer counter starts at the highest resolution and includes fromrgb and skip, as upstream counts them:
    # b32: fromrgb 0, conv0 1, conv1 2, skip 3; b16: conv0 4, ...
    D = _tiny_D(block_kwargs=dict(freeze_layers=5))
    frozen = ['b32.fromrgb', 'b32.conv0', 'b32.conv1', 'b32.skip', 'b16.conv0']
    params = [n for n, _ in D.named_parameters()]
    buffers = [n for n, _ in D.named_buffers()]
    for layer in frozen:
        assert f'{layer}.weight' in buffers and f'{layer}.weight' not in params
    assert 'b32.fromrgb.bias' in buffers and 'b32.skip.bias' not in buffers + params
    assert 'b16.conv1.weight' in params and 'b16.conv1.bias' in params
    assert _numel(D) == _numel(_tiny_D()) - sum(
        t.numel() for n, t in D.named_buffers() if n.rsplit('.', 1)[1] in ('weight', 'bias'))


@pytest.mark.parametrize('res, num_ws', [(4, 2), (8, 4), (32, 8), (256, 14), (512, 16), (1024, 18)])
def test_num_ws(res, num_ws):
    for arch in ('skip', 'resnet', 'orig'):
        G = networks.Generator(z_dim=4, c_dim=0, w_dim=4, img_resolution=res, img_channels=3,
                               mapping_kwargs=dict(num_layers=1),
                               synthesis_kwargs=dict(channel_base=4 * res, channel_max=2, architecture=arch))
        assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == num_ws == 2 * int(np.log2(res)) - 2


def test_w_slicing_torgb_shares_index_with_next_conv0():
    """Each affine sees ws[:, index]; torgb of block k uses the same index as conv0 of block k+1."""
    G = _tiny_G()
    seen = {}
    hooks = []
    for name, mod in G.synthesis.named_modules():
        if name.endswith('affine'):
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: seen.__setitem__(name[:-len('.affine')], inp[0][0, 0].item())))
    ws = torch.arange(G.num_ws, dtype=torch.float32).reshape(1, -1, 1).repeat(2, 1, G.w_dim)
    G.synthesis(ws, noise_mode='none')
    for h in hooks:
        h.remove()
    assert seen == {'b4.conv1': 0, 'b4.torgb': 1, 'b8.conv0': 1, 'b8.conv1': 2, 'b8.torgb': 3, 'b16.conv0': 3,
                    'b16.conv1': 4, 'b16.torgb': 5, 'b32.conv0': 5, 'b32.conv1': 6, 'b32.torgb': 7}


def test_initialisation():
    G = _tiny_G()
    assert torch.equal(G.synthesis.b8.conv0.affine.bias, torch.ones(16))        # affine biases start at 1
    assert G.synthesis.b8.conv0.noise_strength.item() == 0
    assert torch.equal(G.mapping.w_avg, torch.zeros(16))
    big = networks.MappingNetwork(z_dim=256, c_dim=0, w_dim=256, num_ws=1, num_layers=1)
    assert big.fc0.weight.std().item() == pytest.approx(100, rel=0.02)          # N(0,1) / lr_multiplier 0.01
    assert isinstance(G.synthesis.b8.conv0.act_gain, (float, np.floating))
    assert isinstance(G.mapping.fc0.weight_gain, np.float64)


# ----------------------------------------------------------------------------
# Forward passes at 32x32 on CPU.


@pytest.mark.parametrize('architecture', ['skip', 'resnet', 'orig'])
@pytest.mark.parametrize('c_dim', [0, 5])
def test_forward_G_and_D(architecture, c_dim, device):
    G = _tiny_G(c_dim=c_dim, architecture=architecture, num_fp16_res=2).to(device)
    D = _tiny_D(c_dim=c_dim, architecture=architecture, num_fp16_res=2).to(device)
    z = torch.randn([4, 16], device=device)
    c = torch.nn.functional.one_hot(torch.arange(4, device=device) % max(c_dim, 1), max(c_dim, 1)).float()[:, :c_dim]
    img = G(z, c, truncation_psi=0.7, truncation_cutoff=4, noise_mode='const')
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32 and torch.isfinite(img).all()
    logits = D(img, c)
    assert logits.shape == (4, 1) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # force_fp32 gives the same result as the fp32 path (identical on CPU, where fp16 is off anyway).
    if device.type == 'cpu':
        assert torch.equal(G(z, c, noise_mode='const'), G(z, c, noise_mode='const', force_fp32=True))


def test_fp16_config_runs_in_float32_on_cpu():
    G = _tiny_G(num_fp16_res=4)
    assert G.synthesis.b32.use_fp16 and G.synthesis.b16.use_fp16
    dtypes = []
    G.synthesis.b32.register_forward_hook(lambda m, i, out: dtypes.append(out[0].dtype))
    G(torch.randn(2, 16), None)
    assert dtypes == [torch.float32]


def test_noise_modes():
    G = _tiny_G().eval()
    z = torch.randn([2, 16])
    base = G(z, None, noise_mode='none')
    # noise_strength starts at 0: every mode agrees.
    assert torch.allclose(G(z, None, noise_mode='const'), base) and torch.allclose(G(z, None), base)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.5)
    const = G(z, None, noise_mode='const')
    assert torch.equal(const, G(z, None, noise_mode='const'))                   # deterministic
    assert not torch.allclose(const, base)
    torch.manual_seed(1)
    r1 = G(z, None, noise_mode='random')
    torch.manual_seed(2)
    assert not torch.allclose(r1, G(z, None, noise_mode='random'))
    torch.manual_seed(1)
    assert torch.equal(r1, G(z, None, noise_mode='random'))
    with pytest.raises(ValueError, match='noise_mode'):
        G(z, None, noise_mode='bogus')


def test_shape_asserts_at_boundaries():
    G, D = _tiny_G(), _tiny_D()
    with pytest.raises(AssertionError):
        G(torch.randn(2, 15), None)
    with pytest.raises(AssertionError):
        G.synthesis(torch.randn(2, G.num_ws + 1, 16))
    with pytest.raises(AssertionError):
        D(torch.randn(2, 3, 16, 16), None)


# ----------------------------------------------------------------------------
# Layer math, checked numerically on tiny layers.


def _effective_kernels(weight, styles, demodulate):
    """Extract the per-sample kernel of modulated_conv2d by feeding one-hot inputs (it is linear in x)."""
    N, I = styles.shape
    O, _, k, _ = weight.shape
    basis = torch.eye(I * k * k, dtype=weight.dtype).reshape(I * k * k, I, k, k)
    kernels = []
    for n in range(N):
        s = styles[n:n + 1].repeat(len(basis), 1)
        out = networks.modulated_conv2d(basis, weight, s, demodulate=demodulate, fused_modconv=False)  # [B, O, 1, 1]
        kernels.append(out[:, :, 0, 0].T.reshape(O, I, k, k))
    return torch.stack(kernels)  # [NOIkk]


def test_demodulation_gives_unit_norm_effective_weights():
    torch.manual_seed(0)
    weight, styles = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    kern = _effective_kernels(weight, styles, demodulate=True)
    norms = kern.square().sum(dim=[2, 3, 4]).sqrt()
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    # And the kernel is weight * style, rescaled: compare with the closed form (StyleGAN2 eq. 1-3).
    wp = weight[None] * styles[:, None, :, None, None]
    assert torch.allclose(kern, wp / wp.square().sum(dim=[2, 3, 4], keepdim=True).sqrt(), atol=1e-6)
    # Without demodulation it is exactly the modulated weight.
    assert torch.allclose(_effective_kernels(weight, styles, demodulate=False), wp, atol=1e-10)


@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('demodulate', [True, False])
def test_fused_equals_non_fused_modconv(up, demodulate):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    weight, styles = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    noise = torch.randn(3, 1, 6 * up, 6 * up, dtype=torch.float64)
    f = torch.tensor([1., 3., 3., 1.])
    f = (f[:, None] * f[None, :]) / 64
    kw = dict(up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=(up == 1), noise=noise)
    a = networks.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    b = networks.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    assert a.shape == (3, 5, 6 * up, 6 * up)
    assert torch.allclose(a, b, atol=1e-10)


def test_upsampling_layer_is_zero_insert_filter_then_true_convolution():
    """Fact sheet 4.3: conv0 (up=2) == zero insertion, FIR [1,3,3,1]^2/64 * 4 with pad [3,2,3,2], then
    F.conv2d with the spatially flipped weight."""
    torch.manual_seed(0)
    layer = networks.SynthesisLayer(4, 5, w_dim=8, resolution=8, up=2, use_noise=False).double()
    layer.resample_filter = layer.resample_filter.float()  # FIR filters stay float32 (ops contract)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 8, dtype=torch.float64)
    got = layer(x, w, fused_modconv=False)
    # Independent computation with plain torch ops.
    styles = layer.affine(w)
    wp = layer.weight[None] * styles[:, None, :, None, None]
    wp = wp / (wp.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).sqrt()
    up = torch.zeros(2, 4, 8, 8, dtype=torch.float64)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, [3, 2, 3, 2])
    f = torch.tensor([1., 3., 3., 1.], dtype=torch.float64)
    f = (f[:, None] * f[None, :]) / 64 * 4
    up = F.conv2d(up, f.expand(4, 1, 4, 4), groups=4)                 # symmetric filter: conv == correlation
    ref = torch.stack([F.conv2d(up[n:n + 1], wp[n].flip([2, 3]))[0] for n in range(2)])
    ref = F.leaky_relu(ref + layer.bias[None, :, None, None], 0.2) * np.sqrt(2)
    assert got.shape == (2, 5, 8, 8)
    assert torch.allclose(got, ref, atol=1e-10)


def test_fully_connected_and_conv_equalised_lr():
    torch.manual_seed(0)
    fc = networks.FullyConnectedLayer(6, 3, lr_multiplier=0.1, bias_init=0.5).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    want = x @ (fc.weight * 0.1 / np.sqrt(6)).T + fc.bias * 0.1
    assert torch.allclose(fc(x), want, atol=1e-12)
    assert torch.allclose(fc.bias * 0.1, torch.full([3], 0.5 * 0.1, dtype=torch.float64))
    conv = networks.Conv2dLayer(3, 4, 3, activation='lrelu', conv_clamp=0.5).double()
    conv.resample_filter = conv.resample_filter.float()  # FIR filters stay float32 (ops contract)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight / np.sqrt(27), conv.bias, padding=1)
    ref = (F.leaky_relu(ref, 0.2) * np.sqrt(2)).clamp(-0.5, 0.5)
    assert torch.allclose(conv(x), ref, atol=1e-12)
    # gain scales both the output and the clamp.
    ref2 = (F.leaky_relu(F.conv2d(x, conv.weight / np.sqrt(27), conv.bias, padding=1), 0.2)
            * np.sqrt(2) * 0.25).clamp(-0.125, 0.125)
    assert torch.allclose(conv(x, gain=0.25), ref2, atol=1e-12)


@pytest.mark.parametrize('N, group_size, num_channels', [(8, 4, 1), (8, 2, 2), (6, 3, 1), (4, 8, 1), (5, None, 1)])
def test_minibatch_std_strided_groups(N, group_size, num_channels):
    torch.manual_seed(0)
    x = torch.randn(N, 4, 3, 3, dtype=torch.float64)
    got = networks.MinibatchStdLayer(group_size, num_channels)(x)
    G = N if group_size is None else min(group_size, N)
    n = N // G
    c = 4 // num_channels
    want = torch.empty(N, num_channels, 3, 3, dtype=torch.float64)
    for j in range(n):
        members = [k for k in range(N) if k % n == j]               # strided: j, j+n, j+2n, ...
        grp = x[members]                                            # [G, C, H, W]
        std = (grp.var(dim=0, unbiased=False) + 1e-8).sqrt()       # population variance
        for f in range(num_channels):
            want[members, f] = std[f * c:(f + 1) * c].mean()
    assert got.shape == (N, 4 + num_channels, 3, 3)
    assert torch.equal(got[:, :4], x)
    assert torch.allclose(got[:, 4:], want, atol=1e-12)


def test_minibatch_std_rejects_indivisible_batch():
    with pytest.raises(ValueError, match='divisible'):
        networks.MinibatchStdLayer(4)(torch.randn(6, 2, 2, 2))


def test_w_avg_update_rule():
    torch.manual_seed(0)
    M = networks.MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=3, num_layers=2, w_avg_beta=0.9).train()
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    w1 = M(z1, None)
    assert w1.shape == (5, 3, 8)
    assert torch.allclose(M.w_avg, 0.1 * w1[:, 0].mean(0), atol=1e-6)
    w2 = M(z2, None)
    assert torch.allclose(M.w_avg, 0.9 * 0.1 * w1[:, 0].mean(0) + 0.1 * w2[:, 0].mean(0), atol=1e-6)
    before = M.w_avg.clone()
    M(z1, None, skip_w_avg_update=True)
    assert torch.equal(M.w_avg, before)
    M.eval()(z1, None)
    assert torch.equal(M.w_avg, before)


def test_truncation_formula():
    torch.manual_seed(0)
    M = networks.MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=4, num_layers=2).eval()
    with torch.no_grad():
        M.w_avg.normal_()
    z = torch.randn(3, 8)
    w = M(z, None)
    t = M(z, None, truncation_psi=0.3)
    assert torch.allclose(t, M.w_avg + 0.3 * (w - M.w_avg), atol=1e-6)
    tc = M(z, None, truncation_psi=0.3, truncation_cutoff=2)
    assert torch.allclose(tc[:, :2], t[:, :2]) and torch.equal(tc[:, 2:], w[:, 2:])
    # Generator passes truncation through.
    G = _tiny_G().eval()
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    z = torch.randn(2, 16)
    ws = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.allclose(G(z, None, truncation_psi=0.5, truncation_cutoff=3, noise_mode='const'),
                          G.synthesis(ws, noise_mode='const'))


def test_mapping_normalises_inputs_and_conditions():
    torch.manual_seed(0)
    M = networks.MappingNetwork(z_dim=8, c_dim=3, w_dim=8, num_ws=None, num_layers=1)
    z, c = torch.randn(2, 8), torch.randn(2, 3)
    assert torch.allclose(M(z * 7, c), M(z, c), atol=1e-5)            # pixel norm of z (and of embed(c))
    assert M(z, c).shape == (2, 8)
    assert not torch.allclose(M(z, c), M(z, -c))


# ----------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize('c_dim', [0, 3])
@pytest.mark.parametrize('architecture', ['skip', 'resnet'])
def test_gradients_reach_every_parameter(c_dim, architecture):
    G = _tiny_G(c_dim=c_dim, architecture=architecture).train()
    D = _tiny_D(c_dim=c_dim, architecture=architecture).train()
    with torch.no_grad():  # non-zero noise strengths so that their gradients are not trivially tied to 0
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.1)
    z, c = torch.randn(4, 16), torch.randn(4, c_dim)
    D(G(z, c), c).sum().backward()
    for module in (G, D):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_double_backward_through_D_for_r1():
    D = _tiny_D(c_dim=2, architecture='resnet').train()
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    c = torch.randn(4, 2)
    logits = D(img, c)
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    weights = [(n, p) for n, p in D.named_parameters() if n.endswith('weight')]
    for name, p in weights:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # R1 must actually differentiate the input gradient: compare with a central finite difference along a
    # random weight direction. D computes in float32 whatever the input dtype (as upstream), so the check
    # uses a smooth activation (no kinks for the difference to straddle) and a large step.
    Ds = _tiny_D(c_dim=2, architecture='resnet', block_kwargs=dict(activation='softplus'),
                 epilogue_kwargs=dict(activation='softplus'))
    p = Ds.b8.conv0.weight
    direction = torch.randn_like(p)

    def r1(create_graph):
        x = img.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(Ds(x, c).sum(), x, create_graph=create_graph)
        return g.square().sum(dim=[1, 2, 3]).mean()

    (analytic,) = torch.autograd.grad(r1(True), p)
    eps = 1e-2
    with torch.no_grad():
        p.add_(eps * direction)
    plus = r1(False).item()
    with torch.no_grad():
        p.sub_(2 * eps * direction)
    minus = r1(False).item()
    fd = (plus - minus) / (2 * eps)
    assert fd == pytest.approx((analytic * direction).sum().item(), rel=1e-2)


# ----------------------------------------------------------------------------
# Persistence and misc.


ALL_CLASSES = ['FullyConnectedLayer', 'Conv2dLayer', 'MappingNetwork', 'SynthesisLayer', 'ToRGBLayer',
               'SynthesisBlock', 'SynthesisNetwork', 'Generator', 'DiscriminatorBlock', 'MinibatchStdLayer',
               'DiscriminatorEpilogue', 'Discriminator']


def test_every_network_class_is_persistent_and_registered():
    for name in ALL_CLASSES:
        cls = getattr(networks, name)
        assert persistence.is_persistent(cls) and persistence.registry[name] is cls


def test_init_args_recorded_as_deep_copies():
    synthesis_kwargs = dict(channel_base=256, channel_max=16)
    G = networks.Generator(16, 0, w_dim=16, img_resolution=8, img_channels=3, synthesis_kwargs=synthesis_kwargs)
    synthesis_kwargs['channel_base'] = 999
    assert G.init_args == (16, 0)
    assert G.init_kwargs == dict(w_dim=16, img_resolution=8, img_channels=3,
                                 synthesis_kwargs=dict(channel_base=256, channel_max=16))
    assert G.init_kwargs.w_dim == 16                                   # EasyDict
    b4 = G.synthesis.b4
    assert b4.init_args == (0, 16)
    assert b4.init_kwargs == dict(w_dim=16, resolution=4, img_channels=3, is_last=False, use_fp16=False)


def test_reduce_uses_upstream_persistent_format():
    G = _tiny_G()
    func, args, state = G.__reduce__()
    assert func is persistence._reconstruct_persistent_obj and state is None
    meta = args[0]
    assert set(meta) == {'type', 'version', 'module_src', 'class_name', 'state'}
    assert meta['type'] == 'class' and meta['version'] == 6 and meta['class_name'] == 'Generator'
    assert 'class SynthesisBlock' in meta['module_src']
    assert meta['state']['_init_kwargs']['img_resolution'] == 32
    assert set(meta['state']['_modules']) == {'synthesis', 'mapping'}


def test_deepcopy_and_plain_pickle_roundtrip_without_exec(tmp_path):
    G = _tiny_G().eval()
    z = torch.randn(2, 16)
    ref = G(z, None, noise_mode='const')
    G2 = copy.deepcopy(G)
    assert type(G2) is networks.Generator and torch.equal(G2(z, None, noise_mode='const'), ref)
    # A tampered module_src is never executed by our _reconstruct_persistent_obj.
    sentinel = tmp_path / 'executed'
    meta = G.__reduce__()[1][0]
    meta['module_src'] = f'open({str(sentinel)!r}, "w").write("x")\n'
    obj = persistence._reconstruct_persistent_obj(meta)
    assert not sentinel.exists() and torch.equal(obj(z, None, noise_mode='const'), ref)
    G3 = pickle.loads(pickle.dumps(G))
    assert torch.equal(G3(z, None, noise_mode='const'), ref)


def test_reconstruct_rejects_unknown_class_and_version():
    with pytest.raises(ValueError, match='unknown persistent class'):
        persistence._reconstruct_persistent_obj(dict(type='class', version=6, module_src='', class_name='Nope',
                                                     state={}))
    with pytest.raises(ValueError, match='version'):
        persistence._reconstruct_persistent_obj(dict(type='class', version=5, module_src='',
                                                     class_name='Generator', state={}))


def test_misc_helpers():
    a = misc.constant(1.5, shape=[2, 3])
    assert a.shape == (2, 3) and (a == 1.5).all() and misc.constant(1.5, shape=[2, 3]) is a
    misc.assert_shape(torch.zeros(2, 3), [None, 3])
    with pytest.raises(AssertionError, match='dimension 1'):
        misc.assert_shape(torch.zeros(2, 3), [2, 4])
    with pytest.raises(AssertionError, match='number of dimensions'):
        misc.assert_shape(torch.zeros(2, 3), [2])
    src, dst = _tiny_G(), _tiny_G()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    for (n1, t1), (n2, t2) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert n1 == n2 and torch.equal(t1, t2)
    with pytest.raises(KeyError, match='mapping.embed'):
        misc.copy_params_and_buffers(_tiny_G(), _tiny_G(c_dim=2), require_all=True)


def test_print_module_summary_counts(capsys):
    G = _tiny_G()
    out = misc.print_module_summary(G, [torch.randn(2, 16), None])
    assert out.shape == (2, 3, 32, 32)
    text = capsys.readouterr().out
    total_line = [line for line in text.splitlines() if line.startswith('Total')][0]
    assert total_line.split()[1:3] == [str(_numel(G)), str(sum(b.numel() for b in G.buffers()))]
    assert 'synthesis.b32.torgb' in text


# ----------------------------------------------------------------------------
# GPU.


@pytest.mark.gpu
def test_fp16_blocks_on_cuda_and_match_cpu(monkeypatch):
    # TF32 (on by default for cuDNN) would make the float32 comparison below fail by ~1e-3.
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    G = _tiny_G(num_fp16_res=2, fp16_channels_last=True).eval()
    D = _tiny_D(num_fp16_res=2, block_kwargs=dict(fp16_channels_last=True)).eval()
    z = torch.randn(4, 16)
    ref = G(z, None, noise_mode='const')
    Gc, Dc = copy.deepcopy(G).cuda(), copy.deepcopy(D).cuda()
    dtypes = {}
    for name in ('b16', 'b32', 'b8'):
        getattr(Gc.synthesis, name).register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o[0].dtype))
    img = Gc(z.cuda(), None, noise_mode='const')
    assert dtypes == {'b8': torch.float32, 'b16': torch.float16, 'b32': torch.float16}
    assert img.dtype == torch.float32
    assert torch.allclose(img.cpu(), ref, atol=0.05)
    fp32 = Gc(z.cuda(), None, noise_mode='const', force_fp32=True)
    assert torch.allclose(fp32.cpu(), ref, atol=1e-4)
    assert torch.allclose(Dc(img, None).cpu(), D(img.cpu(), None), atol=0.05)
    # Training path (non-fused, fp16) with gradients.
    Gc.train()
    Dc(Gc(z.cuda(), None), None).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in Gc.parameters())
