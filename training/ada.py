"""ADA: adaptive discriminator augmentation's controller of the augmentation probability p.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", section 3: every
`interval` iterations, r_t = E[sign(D(real))] over the images since the previous adjustment, and
p <- max(p + sign(r_t - target) * batch * interval / (ada_kimg * 1000), 0), so p can move by 1 in
ada_kimg thousand images. Upstream has no upper bound; `p_max` (--ada-p-max) adds one.

The controller owns the update rule and the pending sign statistics. p itself has one copy: the
augmentation pipe's `p` buffer, which this controller reads and writes.
"""

import math

import torch

from torch_utils import training_stats

SIGN_STAT = 'Loss/signs/real'  # the loss reports sign(D(real)) under this name


def adjusted_p(p, r_t, target, batch_size, interval, ada_kimg, p_max=None):
    """One ADA update of p (float); a NaN r_t (no samples since the last update) leaves p as it is."""
    if math.isnan(r_t):
        return float(p)
    step = batch_size * interval / (ada_kimg * 1000)
    sign = (r_t > target) - (r_t < target)
    p = max(float(p) + sign * step, 0.0)
    return p if p_max is None else min(p, float(p_max))


class AdaController:
    """Adjusts `augment_pipe.p` every `interval` iterations (or never when `target` is None: fixed p).

    Args:
        augment_pipe: the pipe whose `p` buffer is the augmentation probability.
        target: r_t target (None = keep p fixed).
        interval: iterations between adjustments.
        ada_kimg: thousands of images for p to change by 1.
        batch_size: images per iteration over all ranks.
        p_max: optional upper bound for p.
    """

    def __init__(self, augment_pipe, target, interval, ada_kimg, batch_size, p_max=None):
        self.pipe = augment_pipe
        self.target, self.interval, self.ada_kimg = target, interval, ada_kimg
        self.batch_size, self.p_max = batch_size, p_max
        # keep_previous=False: an interval without samples must count as empty, not repeat.
        self._signs = None if target is None else training_stats.Collector(regex=SIGN_STAT, keep_previous=False)
        self._carry = [0.0, 0.0]  # [count, sum] of signs folded in at a checkpoint, not yet used

    @property
    def p(self):
        """Current p as a float (reads the buffer: a host sync on a GPU)."""
        return float(self.pipe.p)

    def _take_pending(self):
        """(count, sum) of the signs reported since the last call, carry included; a collective."""
        self._signs.update()
        n = self._signs.num(SIGN_STAT)
        count = self._carry[0] + n
        total = self._carry[1] + (n * self._signs.mean(SIGN_STAT) if n > 0 else 0.0)
        self._carry = [0.0, 0.0]
        return count, total

    def after_step(self, batch_idx):
        """Adjust p when `batch_idx` (iterations done) ends an ADA interval (call on every rank)."""
        if self._signs is None or batch_idx % self.interval != 0:
            return
        count, total = self._take_pending()
        r_t = total / count if count > 0 else float('nan')
        p = adjusted_p(self.p, r_t, self.target, self.batch_size, self.interval, self.ada_kimg, self.p_max)
        self.pipe.p.fill_(p)

    def fold_pending(self):
        """Move pending signs into the carry so that a checkpoint holds them (call on every rank)."""
        if self._signs is not None:
            self._carry = list(self._take_pending())

    def state_dict(self):
        return dict(p=self.p, carry=[float(v) for v in self._carry])

    def load_state_dict(self, state):
        self.pipe.p.fill_(float(state['p']))
        self._carry = [float(v) for v in state['carry']]
        if self._signs is not None:
            self._signs.update()  # signs reported before the load belong to no interval of this run


def set_initial_p(augment_pipe, p):
    """Start value of p (train.py --p or --ada-p-init)."""
    with torch.no_grad():
        augment_pipe.p.fill_(float(p))
