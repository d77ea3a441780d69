"""Optimizers and phases: lazy regularisation, the lr schedule, and one phase's gradient step.

Lazy regularisation (StyleGAN2 appendix B): the regulariser of a network runs every I iterations
with its loss multiplied by I, and Adam is compensated with lr * r and betas ** r, r = I / (I + 1).
"""

import copy
import dataclasses

import torch

import dnnlib
import schedulers
from torch_utils import distributed
from torch_utils import training_stats


class NetOptimizer:
    """Adam of one network with the lazy-regularisation ratio and an optional lr schedule.

    Args:
        module: the network.
        opt_kwargs: optimizer kwargs with the unscaled lr and betas (class_name included).
        reg_interval: regularisation interval I (None: regularised in the main phase, r = 1).
        schedule: schedulers dict driving this optimizer, or None (constant lr).
        total_nimg: training length in images (schedules are functions of cur_nimg / total).
    """

    def __init__(self, module, opt_kwargs, reg_interval, schedule=None, total_nimg=1):
        kwargs = dnnlib.EasyDict(copy.deepcopy(opt_kwargs))
        self.ratio = 1.0 if reg_interval is None else reg_interval / (reg_interval + 1)
        self.base_lr = kwargs.lr
        self.schedule, self.total_nimg = schedule, total_nimg
        kwargs.lr = self.base_lr * self.ratio
        kwargs.betas = [beta ** self.ratio for beta in kwargs.betas]
        self.opt = dnnlib.util.construct_class_by_name(params=list(module.parameters()), **kwargs)

    def schedule_lr(self, cur_nimg):
        """The schedule's value at cur_nimg (the lr curve as the paper draws it; base lr when constant)."""
        if self.schedule is None:
            return self.base_lr
        return schedulers.lr_at(self.schedule, cur_nimg, self.total_nimg, default=self.base_lr)

    @property
    def lr(self):
        """The lr the optimizer uses now: the schedule's value times the lazy-regularisation ratio."""
        return self.opt.param_groups[0]['lr']

    def set_lr(self, cur_nimg):
        """Set this iteration's lr (cheap: no optimizer rebuild)."""
        if self.schedule is not None:
            lr = self.schedule_lr(cur_nimg) * self.ratio
            for group in self.opt.param_groups:
                group['lr'] = lr

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, state):
        self.opt.load_state_dict(state)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation phase: `name` for the loss ('Gmain', 'Greg', 'Dboth', ...), which network, how often."""
    name: str
    net: str
    interval: int


def build_phases(G_reg_interval, D_reg_interval):
    """Gmain/Greg/Dmain/Dreg (or Gboth/Dboth when an interval is None), in upstream's order."""
    phases = []
    for net, interval in (('G', G_reg_interval), ('D', D_reg_interval)):
        if interval is None:
            phases.append(Phase(net + 'both', net, 1))
        else:
            phases += [Phase(net + 'main', net, 1), Phase(net + 'reg', net, interval)]
    return phases


def sanitise_(flat):
    """Replace NaN/Inf entries of `flat` in place (NaN -> 0, +-Inf -> +-1e5).

    Sanitising instead of skipping the step keeps one bad fp16 batch from poisoning Adam's moments
    (as upstream); counting makes it visible (reported per tick).

    Returns:
        number of non-finite entries as a 0-d tensor on flat's device (no host sync).
    """
    count = flat.numel() - torch.isfinite(flat).sum()
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    return count


def sanitise_grads(params):
    """Average the gradients of `params` over ranks, then sanitise them, on one flat buffer.

    One buffer makes the cross-rank average a single collective and the check two kernels, whatever
    the number of tensors; each `.grad` becomes a view into it. (Runs with several ranks use a
    GradAverager instead, which overlaps the average with backward.)

    Args:
        params: parameters whose `.grad` is set (the same set, in the same order, on every rank).

    Returns:
        number of non-finite entries as a 0-d tensor on the gradients' device (no host sync).
    """
    if not params:
        return torch.zeros([], dtype=torch.int64)
    flat = torch.cat([p.grad.flatten() for p in params])
    distributed.all_reduce_mean_(flat)
    count = sanitise_(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return count


class PhaseTimer:
    """CUDA-event timing of each phase (rank 0 on a GPU only), reported as Timing/<phase> per tick."""

    def __init__(self, phases, enabled, device):
        self.device = device
        self.events = {p.name: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                       for p in phases} if enabled else {}
        self.ran = set()

    def start(self, name):
        if name in self.events:
            self.events[name][0].record(torch.cuda.current_stream(self.device))

    def end(self, name):
        if name in self.events:
            self.events[name][1].record(torch.cuda.current_stream(self.device))
            self.ran.add(name)

    def report(self):
        for name in sorted(self.ran):
            start, end = self.events[name]
            end.synchronize()
            training_stats.report0('Timing/' + name, start.elapsed_time(end))


def run_phase(phase, module, optimizer, loss, batches, timer, averager=None):
    """Accumulate one phase's gradients over the per-GPU rounds, average across ranks, sanitise, step.

    Args:
        phase: the Phase.
        module: the network it trains.
        optimizer: its NetOptimizer.
        loss: the training loss (accumulate_gradients).
        batches: list of (real_img, real_c, gen_z, gen_c) per-GPU rounds.
        timer: PhaseTimer.
        averager: the network's distributed.GradAverager (several ranks), or None.
    """
    timer.start(phase.name)
    optimizer.opt.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    last_round = len(batches) - 1 if averager is not None else None
    for index, (real_img, real_c, gen_z, gen_c) in enumerate(batches):
        # The last round's last backward pass leaves the final gradients: the averager sends them as they come.
        final = dict(final_backward=averager.final_backward) if index == last_round else {}
        loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c, gen_z=gen_z, gen_c=gen_c,
                                  gain=phase.interval, **final)
    module.requires_grad_(False)
    if averager is None:
        count = sanitise_grads([p for p in module.parameters() if p.grad is not None])  # same set on every rank
    else:
        count = sum(sanitise_(flat) for flat in averager.finish())
    # Gradients are identical on every rank after the average: count them once.
    training_stats.report0(f'Grads/{phase.net}/nonfinite', count)
    optimizer.opt.step()
    timer.end(phase.name)
