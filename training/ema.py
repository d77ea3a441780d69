"""G_ema: the exponential moving average of the generator weights that snapshots and metrics use."""

import torch


class Ema:
    """G_ema <- lerp(G, G_ema, beta) after every iteration; buffers (w_avg, noise) are copied.

    beta = 0.5 ** (batch / ema_nimg): the average's half-life is ema_kimg thousand images. With a
    ramp-up, ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup), so early weights fade fast.

    Args:
        G: the trained generator.
        G_ema: its average (same architecture), updated in place.
        ema_kimg: half-life in kimg.
        ema_rampup: ramp-up coefficient, or None.
    """

    def __init__(self, G, G_ema, ema_kimg, ema_rampup=None):
        self.G, self.G_ema = G, G_ema
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup

    def beta(self, cur_nimg, batch_size):
        """Weight of the old average for a step of `batch_size` images taken at `cur_nimg`."""
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema_rampup)
        return 0.5 ** (batch_size / max(ema_nimg, 1e-8))

    @torch.no_grad()
    def update(self, cur_nimg, batch_size):
        """Average in G after a step; cur_nimg counts the images seen before that step."""
        beta = self.beta(cur_nimg, batch_size)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.G_ema.state_dict()

    def load_state_dict(self, state):
        self.G_ema.load_state_dict(state)
