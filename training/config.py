"""The loop's options, every key with its default (training_options.json holds them), and the frozen
run configuration derived from them.

Parts are built by class name from their `*_kwargs` (dnnlib.util.construct_class_by_name): swapping
the EMA, the ADA controller, an optimizer or the loss is a change of configuration. The upstream-named
scalars (ema_kimg, ada_target, ...) are passed to those constructors; a key in a `*_kwargs` dict
overrides them.
"""

import dataclasses

DEFAULT_EMA_KWARGS = {'class_name': 'training.ema.Ema'}
DEFAULT_ADA_KWARGS = {'class_name': 'training.ada.AdaController'}
_NEVER = 1 << 62                # a snapshot interval that never comes


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """training_loop's options (upstream's names and defaults, then ours)."""
    # Where, and on what.
    run_dir: str = '.'                   # output directory
    training_set_kwargs: dict = None     # dataset (class_name + kwargs)
    data_loader_kwargs: dict = None      # torch DataLoader options
    # The trained parts, each built from class_name + kwargs.
    G_kwargs: dict = None                # generator
    D_kwargs: dict = None                # discriminator
    G_opt_kwargs: dict = None            # G's optimizer, unscaled lr and betas (lazy regularisation scales them)
    D_opt_kwargs: dict = None            # D's optimizer
    augment_kwargs: dict = None          # augmentation pipe (None = no augmentation)
    loss_kwargs: dict = None             # the loss
    ema_kwargs: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_EMA_KWARGS))  # G_ema's averager
    ada_kwargs: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_ADA_KWARGS))  # ADA's controller of p
    metrics: tuple = ()                  # metrics metric_fn evaluates after each network snapshot
    # Processes and batch.
    random_seed: int = 0                 # seed of every random stream
    num_gpus: int = 1                    # processes taking part
    rank: int = 0                        # this process's rank
    local_rank: int = None               # device index under torchrun (None = rank)
    batch_size: int = 4                  # images per iteration over all ranks
    batch_gpu: int = 4                   # images per pass on one rank
    # EMA, regularisation, augmentation (passed to the parts' constructors).
    ema_kimg: float = 10                 # G_ema half-life in kimg
    ema_rampup: float = None             # its ramp-up (None = none)
    G_reg_interval: int = 4              # lazy regularisation interval of G (None = with the main loss)
    D_reg_interval: int = 16             # ... of D
    augment_p: float = 0                 # initial augmentation probability
    ada_target: float = None             # ADA target for r_t (None = fixed p)
    ada_interval: int = 4                # iterations between ADA adjustments
    ada_kimg: float = 500                # kimg for p to move by 1
    ada_p_max: float = None              # upper bound of p (None = none, as upstream)
    # Length, ticks, snapshots, checkpoints.
    total_kimg: float = 25000            # training length
    kimg_per_tick: float = 4             # progress tick length
    image_snapshot_ticks: int = 50       # ticks between image snapshots (None = never)
    network_snapshot_ticks: int = 50     # ticks between network snapshots (None = never)
    snap_kimg: tuple = ()                # extra snapshots (and metrics) when cur_nimg first reaches these kimg
    checkpoint_ticks: int = None         # ticks between training states (None = network_snapshot_ticks or 50)
    # Transfer learning and the lr schedule.
    resume_pkl: str = None               # transfer source (weights only)
    resume_pkl_sha256: str = None        # its sha256 when the run was set up
    lr_schedule: dict = None             # schedulers dict (None = constant lr)
    lr_schedule_target: str = 'both'     # 'g', 'd' or 'both'
    # Performance and output.
    device: str = 'auto'                 # 'auto', 'cpu' or 'cuda'
    cudnn_benchmark: bool = True         # cuDNN autotuning
    allow_tf32: bool = False             # TF32 matmuls and convolutions
    print_summary: bool = True           # module summary tables at start-up

    @property
    def reg_intervals(self):
        return dict(G=self.G_reg_interval, D=self.D_reg_interval)

    def __post_init__(self):
        # A stored run without these keys (or with null) gets the default classes.
        for name, default in (('ema_kwargs', DEFAULT_EMA_KWARGS), ('ada_kwargs', DEFAULT_ADA_KWARGS)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, dict(default))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The fixed settings the iteration and tick functions read (derived once from the LoopOptions)."""
    run_dir: str
    rank: int
    num_gpus: int
    device: object          # torch.device
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
    training_set_kwargs: dict

    @property
    def total_nimg(self):
        return self.total_kimg * 1000


def run_config(o, device):
    """The RunConfig of LoopOptions `o` on `device` (intervals of None become never / the defaults)."""
    assert o.batch_size % (o.batch_gpu * o.num_gpus) == 0, 'batch_size must be a multiple of batch_gpu * num_gpus'
    return RunConfig(run_dir=o.run_dir, rank=o.rank, num_gpus=o.num_gpus, device=device, batch_size=o.batch_size,
                     batch_gpu=o.batch_gpu, random_seed=o.random_seed, total_kimg=o.total_kimg,
                     kimg_per_tick=o.kimg_per_tick, snap_kimg=tuple(sorted(float(k) for k in o.snap_kimg or ())),
                     image_snapshot_ticks=o.image_snapshot_ticks or _NEVER,
                     network_snapshot_ticks=o.network_snapshot_ticks or _NEVER,
                     checkpoint_ticks=o.checkpoint_ticks or o.network_snapshot_ticks or 50,
                     metrics=tuple(o.metrics or ()), training_set_kwargs=o.training_set_kwargs)
