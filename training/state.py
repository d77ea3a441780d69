"""The training state: what changes while a run trains (the trained objects, the counters, the tick
clock), in one object passed beside the frozen RunConfig, and the registry of what a checkpoint holds.

A new piece of checkpointed state is one `register` line in `_checkpointed`: saving and loading both
read that table (torch_utils.checkpoint.Registry).
"""

import dataclasses
import time

from torch_utils import checkpoint
from training.counters import Counters
from training.model import Model


@dataclasses.dataclass
class TickClock:
    """Wall-clock marks of the run and of the tick in progress."""
    start: float
    tick_start: float = 0.0
    maintenance: float = 0.0
    last_line: float = 0.0

    def begin_training(self):
        """The first tick starts now; its maintenance is the set-up time, as upstream."""
        self.tick_start = time.time()
        self.maintenance = self.tick_start - self.start

    def end_maintenance(self, tick_end):
        """The next tick starts now; the time since `tick_end` was maintenance."""
        self.tick_start = time.time()
        self.maintenance = self.tick_start - tick_end


def _checkpointed(model, counters, rank):
    """The named parts of a training-state file (the names are the file format: keep them)."""
    registry = checkpoint.Registry()
    registry.register('G', model.G)
    registry.register('D', model.D)
    registry.register('G_ema', model.ema)
    registry.register('G_opt', model.opts['G'])
    registry.register('D_opt', model.opts['D'])
    registry.register('loss', model.loss)
    registry.register('ada', model.ada)  # None without ADA
    registry.register('counters', counters)
    registry.register('rng', checkpoint.RngState(apply=rank == 0))  # the other ranks keep their streams
    return registry


@dataclasses.dataclass
class TrainingState:
    """Everything a run changes as it trains; `checkpointed` names what a training-state file holds."""
    model: Model
    counters: Counters
    clock: TickClock
    checkpointed: checkpoint.Registry


def new_state(model, rank, start_time):
    """The state of a run at image 0 with the trained objects of `model`."""
    counters = Counters()
    return TrainingState(model=model, counters=counters, clock=TickClock(start=start_time),
                         checkpointed=_checkpointed(model, counters, rank))
