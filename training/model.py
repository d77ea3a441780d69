"""The trained objects of a run (networks, augmentation and ADA, loss, optimizers, phases) and how
they are built, or filled from a transfer-learning pickle."""

import copy
import dataclasses

import torch

import dnnlib
from patches import network_pickle
from torch_utils import distributed
from torch_utils.distributed import print0
from torch_utils import misc
from training import ada as ada_lib
from training import augment  # noqa: F401  (registers AugmentPipe for the pickle loader)
from training import networks  # noqa: F401  (registers the network classes for the pickle loader)
from training import phases as phase_lib


@dataclasses.dataclass
class Model:
    """The trained objects, built once by `build_model`; each field is set only there."""
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    augment_pipe: torch.nn.Module
    loss: object
    ema: object             # G_ema's averager (training.ema.Ema by default)
    ada: object             # ADA controller of p (training.ada.AdaController by default), or None
    opts: dict              # 'G'/'D' -> NetOptimizer
    phases: list            # [Phase]
    timer: phase_lib.PhaseTimer
    averagers: dict         # 'G'/'D' -> distributed.GradAverager with several ranks; empty for one

    def fold_pending(self):
        """Cross-rank work a checkpoint needs first: ADA's pending statistics (a collective; every rank)."""
        if self.ada is not None:
            self.ada.fold_pending()


def build_networks(run, training_set, G_kwargs, D_kwargs, print_summary):
    print0('Constructing networks...')
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


def _build_augmentation(run, parts):
    """The augmentation pipe and its ADA controller, or (None, None) without augmentation."""
    if parts.augment_kwargs is None or (parts.augment_p == 0 and parts.ada_target is None):
        return None, None
    pipe = dnnlib.util.construct_class_by_name(**parts.augment_kwargs).train().requires_grad_(False).to(run.device)
    ada_lib.set_initial_p(pipe, parts.augment_p)
    ada = dnnlib.util.construct_class_by_name(**dict(dict(target=parts.ada_target, interval=parts.ada_interval,
                                                          ada_kimg=parts.ada_kimg, p_max=parts.ada_p_max),
                                                     **parts.ada_kwargs),
                                              augment_pipe=pipe, batch_size=run.batch_size)
    return pipe, ada


def _build_optimizers(run, parts, G, D):
    opts = {}
    schedule, target = parts.lr_schedule, parts.lr_schedule_target
    for name, module, opt_kwargs in (('G', G, parts.G_opt_kwargs), ('D', D, parts.D_opt_kwargs)):
        scheduled = schedule is not None and target in ('both', name.lower())
        opts[name] = phase_lib.NetOptimizer(module, opt_kwargs, parts.reg_intervals[name],
                                            schedule if scheduled else None, run.total_nimg)
    return opts


def build_model(run, training_set, parts, print_summary):
    """Networks, augmentation + ADA, loss, EMA, optimizers and phases; each built from its kwargs.

    Args:
        run: the RunConfig.
        training_set: the dataset (label and image shapes).
        parts: the LoopOptions (or any object with their `*_kwargs`, ADA, EMA, regularisation and lr
            schedule fields).
        print_summary: print the module summary tables.
    """
    G, D, G_ema = build_networks(run, training_set, parts.G_kwargs, parts.D_kwargs, print_summary)
    pipe, ada = _build_augmentation(run, parts)
    loss = dnnlib.util.construct_class_by_name(device=run.device, G_mapping=G.mapping, G_synthesis=G.synthesis,
                                               D=D, augment_pipe=pipe, **(parts.loss_kwargs or {}))
    ema = dnnlib.util.construct_class_by_name(**dict(dict(ema_kimg=parts.ema_kimg, ema_rampup=parts.ema_rampup),
                                                     **parts.ema_kwargs), G=G, G_ema=G_ema)
    phases = phase_lib.build_phases(parts.reg_intervals['G'], parts.reg_intervals['D'])
    timer = phase_lib.PhaseTimer(phases, enabled=run.rank == 0 and run.device.type == 'cuda', device=run.device)
    # After G_ema's copy: the averagers' hooks belong to the trained networks only. One process: no hooks.
    averagers = {}
    if distributed.world_size() > 1:
        averagers = {name: distributed.GradAverager(module.parameters()) for name, module in (('G', G), ('D', D))}
    return Model(G=G, D=D, G_ema=G_ema, augment_pipe=pipe, loss=loss, ema=ema, ada=ada,
                 opts=_build_optimizers(run, parts, G, D), phases=phases, timer=timer, averagers=averagers)


def transfer_from_pickle(run, model, resume_pkl, resume_pkl_sha256):
    """Transfer learning: weights by name from a network pickle; counters stay at zero."""
    local = dnnlib.util.resolve_path_or_url(network_pickle.resolve_resume(resume_pkl))
    sha = dnnlib.util.sha256_file(local)
    if resume_pkl_sha256 is not None and sha != resume_pkl_sha256:
        raise ValueError(f'{resume_pkl}: sha256 {sha} differs from {resume_pkl_sha256} recorded when '
                         f'the run was set up; the transfer source changed')
    print0(f'Resuming from "{resume_pkl}" (sha256 {sha})')
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
        print0(f'  {name}: copied {len(dst_names) - len(fresh)} tensors; kept fresh {len(fresh)}; '
                     f'source-only {len(unused)}')
        for label, names in (('kept fresh', fresh), ('source-only', unused)):
            if names:
                print0(f'    {label}: {", ".join(names[:8])}' + (' ...' if len(names) > 8 else ''))


