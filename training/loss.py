"""StyleGAN2 loss: non-saturating logistic GAN loss with lazy R1 and path-length regularisation.

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2): section
3.2 (path-length regularisation), appendix B (lazy regularisation); Mescheder et al. 2018 (R1).

One difference from upstream: the path-length EMA `pl_mean` is part of `state_dict()`, so a
continued run restarts with the same regulariser target instead of from 0.
"""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import training_stats

PHASES = ('Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth')


class Loss:
    """Interface of a training loss driven by the training loop."""

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, final_backward=None):
        """Run one phase on one batch chunk and accumulate parameter gradients (`.backward()`).

        final_backward: when given (several ranks, last round), a context-manager factory to enter
        around the call's last backward pass, in which the gradient all-reduce starts.
        """
        raise NotImplementedError()


def draw_mixing_cutoff(num_ws, style_mixing_prob, device):
    """Draw the style-mixing cutoff for one batch (one draw per batch, as upstream).

    With probability `style_mixing_prob` the cutoff is uniform in {1, ..., num_ws - 1}; otherwise it
    is num_ws (no mixing). Stays on `device` so no host sync is needed.

    Args:
        num_ws: number of W vectors the synthesis network consumes.
        style_mixing_prob: probability of mixing.
        device: torch device.

    Returns:
        0-d int64 tensor.
    """
    cutoff = torch.randint(1, max(num_ws, 2), [], device=device)
    mix = torch.rand([], device=device) < style_mixing_prob
    return torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))


def mix_styles(ws, ws_other, cutoff):
    """Take W vectors [cutoff:] from `ws_other` and [:cutoff] from `ws`.

    Args:
        ws: [N, num_ws, w_dim].
        ws_other: [N, num_ws, w_dim].
        cutoff: 0-d integer tensor (or int).

    Returns:
        [N, num_ws, w_dim].
    """
    index = torch.arange(ws.shape[1], device=ws.device)
    # torch.where instead of slicing with a tensor index: slicing would read cutoff on the host.
    return torch.where((index >= cutoff)[None, :, None], ws_other, ws)


class StyleGAN2Loss(Loss):
    """Loss of StyleGAN2 / StyleGAN2-ADA.

    Args:
        device: device of the networks and inputs.
        G_mapping: mapping network, called as G_mapping(z, c, skip_w_avg_update=...) -> ws [N, num_ws, w_dim].
        G_synthesis: synthesis network, called as G_synthesis(ws) -> img [N, C, H, W].
        D: discriminator, called as D(img, c) -> logits [N, 1].
        augment_pipe: optional AugmentPipe applied to every image D sees.
        style_mixing_prob: probability of mixing two latents in a batch (0 disables).
        r1_gamma: R1 weight (0 disables Dreg).
        pl_batch_shrink: path-length regularisation uses batch // pl_batch_shrink samples.
        pl_decay: EMA rate of the path-length target pl_mean.
        pl_weight: path-length weight (0 disables Greg).
    """

    def __init__(self, device, G_mapping, G_synthesis, D, augment_pipe=None, style_mixing_prob=0.9,
                 r1_gamma=10, pl_batch_shrink=2, pl_decay=0.01, pl_weight=2):
        super().__init__()
        self.device = torch.device(device)
        self.G_mapping = G_mapping
        self.G_synthesis = G_synthesis
        self.D = D
        self.augment_pipe = augment_pipe
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.pl_mean = torch.zeros([], device=self.device)

    # -----------------------------------------------------------------------------------------
    # State (so that continuing a run is lossless).

    def state_dict(self):
        """Loss state: the path-length EMA.

        Returns:
            dict with 'pl_mean' (0-d float tensor on CPU).
        """
        return {'pl_mean': self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state):
        """Restore the state written by `state_dict()`.

        Args:
            state: dict with 'pl_mean'.
        """
        self.pl_mean = torch.as_tensor(state['pl_mean'], dtype=torch.float32).reshape([]).to(self.device).clone()

    # -----------------------------------------------------------------------------------------

    def run_G(self, z, c):
        """Generate images, with style mixing decided once for the whole batch.

        Args:
            z: [N, z_dim] latents.
            c: [N, c_dim] labels.

        Returns:
            (img [N, C, H, W], ws [N, num_ws, w_dim]).
        """
        ws = self.G_mapping(z, c)  # also updates w_avg (G in train mode)
        if self.style_mixing_prob > 0:
            cutoff = draw_mixing_cutoff(ws.shape[1], self.style_mixing_prob, ws.device)
            # The second latent must not pull the W average (upstream skips its update too).
            ws_other = self.G_mapping(torch.randn_like(z), c, skip_w_avg_update=True)
            ws = mix_styles(ws, ws_other, cutoff)
        img = self.G_synthesis(ws)
        return img, ws

    def run_D(self, img, c):
        """Augment (when a pipe is set) and score images.

        Args:
            img: [N, C, H, W] images in [-1, 1].
            c: [N, c_dim] labels.

        Returns:
            logits [N, 1].
        """
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    # -----------------------------------------------------------------------------------------

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain, final_backward=None):
        """Compute the phase's loss on one batch chunk and backpropagate it, scaled by `gain`.

        Args:
            phase: one of 'Gmain', 'Greg', 'Gboth', 'Dmain', 'Dreg', 'Dboth'.
            real_img: [N, C, H, W] real images in [-1, 1].
            real_c: [N, c_dim] real labels.
            gen_z: [N, z_dim] latents.
            gen_c: [N, c_dim] labels for the generated images.
            gain: loss multiplier, the phase interval for lazy regularisation.
            final_backward: context-manager factory entered around the last backward pass (see Loss).
        """
        assert phase in PHASES, f'unknown phase {phase!r}'
        do_Gmain = phase in ('Gmain', 'Gboth')
        do_Dmain = phase in ('Dmain', 'Dboth')
        do_Gpl = phase in ('Greg', 'Gboth') and self.pl_weight != 0
        do_Dr1 = phase in ('Dreg', 'Dboth') and self.r1_gamma != 0
        final = final_backward or contextlib.nullcontext
        early = contextlib.nullcontext

        # The order of the passes below decides which is last: Gpl after Gmain, Dreal after Dgen.
        if do_Gmain:
            self._accumulate_Gmain(gen_z, gen_c, gain=gain, backward=early if do_Gpl else final)
        if do_Gpl:
            self._accumulate_Gpl(gen_z, gen_c, gain=gain, backward=final)
        loss_Dgen = None
        if do_Dmain:
            loss_Dgen = self._accumulate_Dgen(gen_z, gen_c, gain=gain, backward=early)
        if do_Dmain or do_Dr1:
            self._accumulate_Dreal(real_img, real_c, loss_Dgen, do_Dmain, do_Dr1, gain=gain, backward=final)

    def _accumulate_Gmain(self, gen_z, gen_c, gain, backward):
        """Non-saturating generator loss softplus(-D(G(z)))."""
        gen_img, _ws = self.run_G(gen_z, gen_c)
        gen_logits = self.run_D(gen_img, gen_c)
        training_stats.report('Loss/scores/fake', gen_logits)
        training_stats.report('Loss/signs/fake', gen_logits.sign())
        loss_Gmain = F.softplus(-gen_logits)
        training_stats.report('Loss/G/loss', loss_Gmain)
        with backward():
            loss_Gmain.mean().mul(gain).backward()

    def _accumulate_Gpl(self, gen_z, gen_c, gain, backward):
        """Path-length regularisation (StyleGAN2 eq. 4) on batch // pl_batch_shrink samples."""
        batch_size = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        gen_img, gen_ws = self.run_G(gen_z[:batch_size], gen_c[:batch_size])
        # Random image-space direction y, scaled so E|J^T y| does not depend on the resolution.
        pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
        # Only the gradient w.r.t. ws is requested, so autograd skips weight gradients here.
        pl_grads, = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                        create_graph=True)
        pl_lengths = pl_grads.square().sum(dim=2).mean(dim=1).sqrt()      # [n]
        pl_mean = self.pl_mean.lerp(pl_lengths.mean(), self.pl_decay)
        self.pl_mean.copy_(pl_mean.detach())
        pl_penalty = (pl_lengths - pl_mean).square()
        training_stats.report('Loss/pl_penalty', pl_penalty)
        loss_Gpl = pl_penalty * self.pl_weight
        training_stats.report('Loss/G/reg', loss_Gpl)
        # `img * 0` keeps the synthesis output in the graph: every parameter gets a gradient, so the
        # ranks all-reduce the same set of tensors.
        with backward():
            (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()

    def _accumulate_Dgen(self, gen_z, gen_c, gain, backward):
        """Discriminator loss on fakes, softplus(D(G(z))); G receives no gradient."""
        with torch.no_grad():
            gen_img, _ws = self.run_G(gen_z, gen_c)
        gen_logits = self.run_D(gen_img, gen_c)
        training_stats.report('Loss/scores/fake', gen_logits)
        training_stats.report('Loss/signs/fake', gen_logits.sign())
        loss_Dgen = F.softplus(gen_logits)
        with backward():
            loss_Dgen.mean().mul(gain).backward()
        return loss_Dgen.detach()

    def _accumulate_Dreal(self, real_img, real_c, loss_Dgen, do_Dmain, do_Dr1, gain, backward):
        """Discriminator loss on reals softplus(-D(x)) and/or R1 (Mescheder et al. 2018, eq. 9)."""
        # R1 is taken w.r.t. the un-augmented reals, through the augmentation (as upstream).
        real_img_tmp = real_img.detach().requires_grad_(do_Dr1)
        real_logits = self.run_D(real_img_tmp, real_c)
        # Reported in Dreg too: ADA's r_t is the mean of these signs.
        training_stats.report('Loss/scores/real', real_logits)
        training_stats.report('Loss/signs/real', real_logits.sign())

        loss_Dreal = 0
        if do_Dmain:
            loss_Dreal = F.softplus(-real_logits)
            training_stats.report('Loss/D/loss', loss_Dgen + loss_Dreal)

        loss_Dr1 = 0
        if do_Dr1:
            r1_grads, = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp],
                                            create_graph=True)
            r1_penalty = r1_grads.square().sum(dim=[1, 2, 3])[:, None]   # [N, 1], sum over C, H, W
            loss_Dr1 = r1_penalty * (self.r1_gamma / 2)
            training_stats.report('Loss/r1_penalty', r1_penalty)
            training_stats.report('Loss/D/reg', loss_Dr1)

        # `logits * 0` keeps D's output in the graph (every parameter gets a gradient) when only R1 is active.
        with backward():
            (real_logits * 0 + loss_Dreal + loss_Dr1).mean().mul(gain).backward()
