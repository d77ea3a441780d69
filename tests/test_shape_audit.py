"""Shape audit of the CUDA paths at the sizes users run, on the meta device (nothing is allocated).

Each case runs real code (the study's networks, loss, augment pipe, the metrics' generator batching,
generate.py's and projector.py's G calls) on meta tensors under torch_utils.op_trace.OpTrace, which
records every launch the custom CUDA kernels (upfirdn2d, bias_act) would be handed and the peak of live
tensor bytes. A case fails when a launch breaks a kernel limit (op_trace.kernel_limit_problems: 32-bit
element counts and indices) or when the memory does not fit the card. The networks compute in float16
where they would on a GPU (fp16 blocks, channels_last), as if the meta device were CUDA.

grid_sample_gradfix and fma run torch's own kernels, which switch to 64-bit indexing by themselves; the
detector (Inception) has no custom op either. Their shapes are still part of the memory figure.
"""

import itertools

import numpy as np
import pytest
import torch

import dnnlib
from metrics import detector as detector_lib
from metrics import metric_utils
from torch_utils import op_trace
from training import networks, options

GiB = 2 ** 30
CARDS = {'80GB': 80 * GiB, '24GB': 24 * GiB}
DETECTOR_BATCH = 64  # the metrics' default detector batch (MetricOptions.batch_size)


@pytest.fixture(autouse=True)
def cuda_dtypes(monkeypatch):
    """fp16 blocks compute in float16 on meta as they would on CUDA."""
    monkeypatch.setattr(networks, '_compute_dtype',
                        lambda use_fp16, force_fp32, device: torch.float16 if use_fp16 and not force_fp32 else
                        torch.float32)


def _study_G(res, cbase=32768):
    """The study's generator (paper512's widths) at `res`, on the CPU (cheap: weights are drawn lazily)."""
    return networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=8),
                              synthesis_kwargs=dict(channel_base=cbase, channel_max=512, num_fp16_res=4,
                                                    conv_clamp=256)).eval().requires_grad_(False)


def _param_bytes(*modules):
    return sum(t.numel() * t.element_size() for m in modules
               for t in itertools.chain(m.parameters(), m.buffers()))


def _check(trace, card_bytes, fixed_bytes, what):
    """Fail naming every broken limit, or the memory figure when it exceeds the card."""
    problems = trace.problems()
    assert not problems, f'{what}: {len(problems)} launches break a kernel limit, first: {problems[:3]}'
    total = trace.peak_bytes + fixed_bytes
    assert total <= card_bytes, f'{what}: {total / GiB:.1f} GiB of tensors on a {card_bytes / GiB:.0f} GiB card'
    return max((int(np.prod(s)) for c in trace.launches for s in (c['in_shape'], c['out_shape'])), default=0)


# ----------------------------------------------------------------------------------------------------------
# FID/KID: the generator batch the metrics choose on each card, and the detector's batch.

@pytest.mark.parametrize('card', list(CARDS))
@pytest.mark.parametrize('res', [128, 256, 512, 1024])
def test_metric_generation_fits_the_kernels_and_the_card(res, card, monkeypatch):
    G = _study_G(res)
    G_kwargs = dict(noise_mode='const')  # the metrics' G_kwargs
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (CARDS[card], CARDS[card]))
    batch_gen = metric_utils.choose_batch_gen(G, 'cuda', DETECTOR_BATCH, G_kwargs)
    assert batch_gen >= 1 and (batch_gen % DETECTOR_BATCH == 0 or DETECTOR_BATCH % batch_gen == 0)

    state = op_trace.meta_state(G)
    with torch.no_grad(), op_trace.OpTrace() as trace:
        z = torch.empty([batch_gen, G.z_dim], device='meta')
        img = torch.func.functional_call(G, state, (z, torch.empty([batch_gen, 0], device='meta')), G_kwargs)
        images = metric_utils.quantize_images(img)
        del img
        # The detector sees DETECTOR_BATCH images at a time, resized to 299x299 in float32.
        for part in images.split(DETECTOR_BATCH):
            detector_lib.tf1_resize_bilinear(part)
    largest = _check(trace, CARDS[card], _param_bytes(G), f'G({batch_gen}) at {res} on {card}')
    print(f'\n{res:5d} {card}: batch_gen {batch_gen:4d}, largest launch {largest / 1e9:.2f}e9 elements, '
          f'peak {trace.peak_bytes / GiB:.1f} GiB')


def test_the_old_pixel_budget_would_break_the_kernels():
    """The audit's own check catches the batch the pixel budget alone gave at 512 (256 images on 80 GB)."""
    G = _study_G(512)
    state = op_trace.meta_state(G)
    with torch.no_grad(), op_trace.OpTrace() as trace:
        torch.func.functional_call(G, state, (torch.empty([256, 512], device='meta'),
                                              torch.empty([256, 0], device='meta')), dict(noise_mode='const'))
    problems = trace.problems()
    assert len(problems) > 10 and 'upfirdn2d' in ' '.join(problems)


# The loss reports its statistics on the meta device: clear them so later tests' collectors never see them.
pytestmark = pytest.mark.usefixtures('fresh_training_stats')


@pytest.fixture(autouse=True)
def _widest_augment_padding(monkeypatch):
    """The augment pipe fits its geometric padding to the batch's draws, which a meta tensor does not hold:
    audit the widest padding it can choose (one full reflection per side), an upper bound for every draw."""
    from training import augment
    monkeypatch.setattr(augment, '_fitted_padding', lambda core, W, H, border: augment._full_padding(W, H))


# ----------------------------------------------------------------------------------------------------------
# Training: paper512, ADA on, every phase including R1 and path length.

def _paper512_step(batch, batch_gpu):
    """(G, D, loss, phases) as train.py builds them for --cfg paper512 --batch B --batch-gpu b --aug ada."""
    info = dnnlib.EasyDict(name='audit', num_images=1000, resolution=512, num_channels=3, has_labels=False,
                           label_dim=0)
    _desc, args = options.build_training_options(dict(data='audit.zip', cfg='paper512', batch=batch,
                                                      batch_gpu=batch_gpu, aug='ada'), dataset_info=info)
    assert args.batch_gpu == batch_gpu and args.augment_kwargs is not None
    common = dict(c_dim=0, img_resolution=512, img_channels=3)
    G = dnnlib.util.construct_class_by_name(**args.G_kwargs, **common).train()
    D = dnnlib.util.construct_class_by_name(**args.D_kwargs, **common).train()
    pipe = dnnlib.util.construct_class_by_name(**args.augment_kwargs).train().requires_grad_(False)
    pipe.p.fill_(0.6)
    loss_kwargs = {k: v for k, v in args.loss_kwargs.items() if k != 'class_name'}
    return G, D, pipe, args.loss_kwargs.class_name, loss_kwargs


@pytest.mark.slow
@pytest.mark.parametrize('batch,batch_gpu', [(32, 32), (64, 8)])
def test_training_step_fits_the_kernels_and_an_80gb_card(batch, batch_gpu):
    G, D, pipe, loss_class, loss_kwargs = _paper512_step(batch, batch_gpu)
    fixed = 4 * _param_bytes(G, D)  # weights, gradients and Adam's two moments
    G.to('meta'), D.to('meta'), pipe.to('meta')
    loss = dnnlib.util.construct_class_by_name(class_name=loss_class, device='meta', G_mapping=G.mapping,
                                               G_synthesis=G.synthesis, D=D, augment_pipe=pipe, **loss_kwargs)
    real = torch.empty([batch_gpu, 3, 512, 512], device='meta')
    c = torch.empty([batch_gpu, 0], device='meta')
    z = torch.empty([batch_gpu, 512], device='meta')
    with op_trace.OpTrace() as trace:
        for phase, module in (('Gmain', G), ('Greg', G), ('Dmain', D), ('Dreg', D)):
            for other in (G, D):
                other.requires_grad_(other is module)
            loss.accumulate_gradients(phase, real, c, z, c, gain=1)
    ops = {launch['op'] for launch in trace.launches}
    assert ops == {'upfirdn2d', 'bias_act'}
    largest = _check(trace, CARDS['80GB'], fixed, f'paper512 batch {batch}/{batch_gpu}')
    print(f'\npaper512 {batch}/{batch_gpu}: {len(trace.launches)} launches, largest {largest / 1e6:.0f}e6 elements, '
          f'peak {trace.peak_bytes / GiB:.1f} GiB + {fixed / GiB:.1f} GiB weights/optimizer')


def test_augment_pipe_at_full_strength():
    """Every ADA transform ('bgcfnc') on a batch of 32 512x512 images, forward and backward (R1 goes through it)."""
    from training import augment
    pipe = augment.AugmentPipe(**augment.augpipe_specs['bgcfnc']).train().requires_grad_(False).to('meta')
    pipe.p.fill_(1.0)
    x = torch.empty([32, 3, 512, 512], device='meta', requires_grad=True)
    with op_trace.OpTrace() as trace:
        y = pipe(x)
        torch.autograd.grad(y.sum(), [x], create_graph=True)
    assert {launch['op'] for launch in trace.launches} == {'upfirdn2d'}
    _check(trace, CARDS['24GB'], 0, 'augment pipe bgcfnc, 32x3x512x512')


# ----------------------------------------------------------------------------------------------------------
# generate.py and projector.py.

@pytest.mark.parametrize('res,batch', [(512, 8), (512, 64), (1024, 32)])
def test_generate_batches_fit(res, batch):
    """generate.py renders --batch-size images per G call (default 8)."""
    G = _study_G(res)
    state = op_trace.meta_state(G)
    with torch.no_grad(), op_trace.OpTrace() as trace:
        torch.func.functional_call(G, state, (torch.empty([batch, 512], device='meta'),
                                              torch.empty([batch, 0], device='meta')),
                                   dict(noise_mode='const', truncation_psi=0.7))
    _check(trace, CARDS['24GB'], _param_bytes(G), f'generate.py G({batch}) at {res}')


@pytest.mark.parametrize('res', [512, 1024])
def test_projector_step_fits(res):
    """One projector step: w statistics (10000 mapping samples), G.synthesis(ws) and its gradient."""
    G = _study_G(res)
    state = op_trace.meta_state(G)
    with op_trace.OpTrace() as trace:
        with torch.no_grad():
            torch.func.functional_call(G.mapping, {k[len('mapping.'):]: v for k, v in state.items()
                                                   if k.startswith('mapping.')},
                                       (torch.empty([10000, 512], device='meta'), None))
        ws = torch.empty([1, G.num_ws, 512], device='meta', requires_grad=True)
        synth = {k[len('synthesis.'):]: v for k, v in state.items() if k.startswith('synthesis.')}
        img = torch.func.functional_call(G.synthesis, synth, (ws,), dict(noise_mode='const'))
        img.sum().backward()
    _check(trace, CARDS['24GB'], _param_bytes(G), f'projector step at {res}')
