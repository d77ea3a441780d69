"""The loop's progress counters, in one record that is saved with every checkpoint."""

import dataclasses


@dataclasses.dataclass
class Counters:
    """Where the run stands. Time is counted in images (cur_nimg), as upstream.

    Attributes:
        cur_nimg: real images shown to D so far (all ranks together).
        cur_tick: index of the tick in progress.
        batch_idx: iterations done (drives the lazy-regularisation and ADA intervals).
        tick_start_nimg: cur_nimg when the tick in progress began.
        points_done: snap_kimg points already snapshotted (and evaluated), ascending.
    """
    cur_nimg: int = 0
    cur_tick: int = 0
    batch_idx: int = 0
    tick_start_nimg: int = 0
    points_done: list = dataclasses.field(default_factory=list)

    def due_points(self, snap_kimg):
        """Requested kimg points reached and not yet snapshotted, ascending."""
        return [k for k in snap_kimg if k not in self.points_done and self.cur_nimg >= k * 1000]

    # The only writers of the counters (besides load_state_dict).

    def advance(self, batch_size):
        """One iteration of `batch_size` images is done."""
        self.cur_nimg += batch_size
        self.batch_idx += 1

    def mark_points(self, points):
        """kimg points whose snapshots were written."""
        self.points_done = sorted(set(self.points_done) | set(points))

    def next_tick(self):
        """The tick in progress ended; the next one starts at cur_nimg."""
        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        for field in dataclasses.fields(self):
            value = state[field.name]
            setattr(self, field.name, [float(k) for k in value] if field.name == 'points_done' else int(value))
