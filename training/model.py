"""The trained objects of a run (networks, augmentation and ADA, loss, optimizers, phases) and how
they are built, or filled from a transfer-learning pickle."""

import copy
import dataclasses

import torch

import dnnlib
from patches import network_pickle
from torch_utils import distributed
from torch_utils import misc
from training import ada as ada_lib
from training import augment  # noqa: F401  (registers AugmentPipe for the pickle loader)
from training import networks  # noqa: F401  (registers the network classes for the pickle loader)
from training import phases as phase_lib
from training.ema import Ema


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The fixed settings the iteration and tick functions read (set once from the loop's kwargs)."""
    run_dir: str
    rank: int
    num_gpus: int
    device: torch.device
    batch_size: int
    batch_gpu: int
    random_seed: int
    total_kimg: float
    kimg_per_tick: float
    snap_kimg: tuple
    image_snapshot_ticks: int
    network_snapshot_ticks: int
    checkpoint_ticks: int
    metrics: tuple

    @property
    def total_nimg(self):
        return self.total_kimg * 1000


@dataclasses.dataclass
class Model:
    """The trained objects, built once by `build_model`; each field is set only there."""
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    augment_pipe: torch.nn.Module
    loss: object
    ema: Ema
    ada: ada_lib.AdaController
    opts: dict              # 'G'/'D' -> NetOptimizer
    phases: list            # [Phase]
    timer: phase_lib.PhaseTimer
    averagers: dict         # 'G'/'D' -> distributed.GradAverager with several ranks; empty for one

    def parts(self):
        """The checkpointed state, by name."""
        return dict(G=self.G.state_dict(), D=self.D.state_dict(), G_ema=self.ema.state_dict(),
                    G_opt=self.opts['G'].state_dict(), D_opt=self.opts['D'].state_dict(),
                    loss=self.loss.state_dict(), ada=self.ada.state_dict() if self.ada is not None else None)

    def load_parts(self, parts):
        self.G.load_state_dict(parts['G'])
        self.D.load_state_dict(parts['D'])
        self.ema.load_state_dict(parts['G_ema'])
        self.opts['G'].load_state_dict(parts['G_opt'])
        self.opts['D'].load_state_dict(parts['D_opt'])
        self.loss.load_state_dict(parts['loss'])
        if self.ada is not None and parts['ada'] is not None:
            self.ada.load_state_dict(parts['ada'])



def print0(run, *args):
    if run.rank == 0:
        print(*args, flush=True)


def build_networks(run, training_set, G_kwargs, D_kwargs, print_summary):
    print0(run, 'Constructing networks...')
    common = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution,
                  img_channels=training_set.num_channels)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common).train().requires_grad_(False).to(run.device)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common).train().requires_grad_(False).to(run.device)
    G_ema = copy.deepcopy(G).eval()
    if run.rank == 0 and print_summary:
        # On copies, with zeros: the summary's forward pass would otherwise move G's w_avg (by garbage
        # from uninitialised inputs), and two fresh runs of one command would differ.
        z = torch.zeros([run.batch_gpu, G.z_dim], device=run.device)
        c = torch.zeros([run.batch_gpu, G.c_dim], device=run.device)
        img = misc.print_module_summary(copy.deepcopy(G), [z, c])
        misc.print_module_summary(copy.deepcopy(D), [img.detach(), c])
    return G, D, G_ema


def build_model(run, training_set, G_kwargs, D_kwargs, G_opt_kwargs, D_opt_kwargs, loss_kwargs, augment_kwargs,
                aug, ema, reg, lr_schedule, print_summary):
    """Networks, augmentation + ADA, loss, optimizers and phases.

    Args (beyond training_loop's own): aug = dict(p, target, interval, kimg, p_max); ema = dict(ema_kimg,
    ema_rampup); reg = dict(G=G_reg_interval, D=D_reg_interval); lr_schedule = dict(schedule, target).
    """
    G, D, G_ema = build_networks(run, training_set, G_kwargs, D_kwargs, print_summary)
    pipe = ada = None
    if augment_kwargs is not None and (aug['p'] > 0 or aug['target'] is not None):
        pipe = dnnlib.util.construct_class_by_name(**augment_kwargs).train().requires_grad_(False).to(run.device)
        ada_lib.set_initial_p(pipe, aug['p'])
        ada = ada_lib.AdaController(pipe, aug['target'], aug['interval'], aug['kimg'], run.batch_size, aug['p_max'])
    loss = dnnlib.util.construct_class_by_name(device=run.device, G_mapping=G.mapping, G_synthesis=G.synthesis,
                                               D=D, augment_pipe=pipe, **loss_kwargs)
    opts = {}
    for name, module, opt_kwargs in (('G', G, G_opt_kwargs), ('D', D, D_opt_kwargs)):
        scheduled = lr_schedule['schedule'] is not None and lr_schedule['target'] in ('both', name.lower())
        opts[name] = phase_lib.NetOptimizer(module, opt_kwargs, reg[name],
                                            lr_schedule['schedule'] if scheduled else None,
                                            run.total_nimg)
    phases = phase_lib.build_phases(reg['G'], reg['D'])
    timer = phase_lib.PhaseTimer(phases, enabled=run.rank == 0 and run.device.type == 'cuda', device=run.device)
    # After G_ema's copy: the averagers' hooks belong to the trained networks only. One process: no hooks.
    averagers = {}
    if distributed.world_size() > 1:
        averagers = {name: distributed.GradAverager(module.parameters()) for name, module in (('G', G), ('D', D))}
    return Model(G=G, D=D, G_ema=G_ema, augment_pipe=pipe, loss=loss, ema=Ema(G, G_ema, **ema), ada=ada, opts=opts,
                 phases=phases, timer=timer, averagers=averagers)


def transfer_from_pickle(run, model, resume_pkl, resume_pkl_sha256):
    """Transfer learning: weights by name from a network pickle; counters stay at zero."""
    local = dnnlib.util.resolve_path_or_url(network_pickle.resolve_resume(resume_pkl))
    sha = dnnlib.util.sha256_file(local)
    if resume_pkl_sha256 is not None and sha != resume_pkl_sha256:
        raise ValueError(f'{resume_pkl}: sha256 {sha} differs from {resume_pkl_sha256} recorded when '
                         f'the run was set up; the transfer source changed')
    print0(run, f'Resuming from "{resume_pkl}" (sha256 {sha})')
    data = network_pickle.load_network_pkl(local)
    for name, dst in (('G', model.G), ('D', model.D), ('G_ema', model.G_ema)):
        if data.get(name) is None:
            raise ValueError(f'{resume_pkl}: the pickle has no {name}')
        try:
            misc.copy_params_and_buffers(data[name], dst, require_all=False)
        except ValueError as e:
            raise ValueError(f'{resume_pkl}: {name}.{e}') from None
        src_names = {n for n, _ in misc.named_params_and_buffers(data[name])}
        dst_names = [n for n, _ in misc.named_params_and_buffers(dst)]
        fresh = [n for n in dst_names if n not in src_names]
        unused = sorted(src_names - set(dst_names))
        print0(run, f'  {name}: copied {len(dst_names) - len(fresh)} tensors; kept fresh {len(fresh)}; '
                     f'source-only {len(unused)}')
        for label, names in (('kept fresh', fresh), ('source-only', unused)):
            if names:
                print0(run, f'    {label}: {", ".join(names[:8])}' + (' ...' if len(names) > 8 else ''))


