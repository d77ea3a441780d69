"""Preemption: SIGTERM or SIGUSR1 ask the run to stop after the current step with a checkpoint.

SIGTERM is what Slurm and most schedulers send before killing a job; SIGUSR1 is what
`sbatch --signal=USR1@<seconds>` sends ahead of the time limit. The loop finishes the step, writes
a checkpoint and status.json (state "preempted"), and train.py exits with EXIT_PREEMPTED (75,
EX_TEMPFAIL: "try again"), so a job script can requeue; re-running the command continues the run.
SIGINT (Ctrl-C) is left alone: it interrupts at once, and the run continues from its last checkpoint.
"""

import signal
import threading

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Context manager that turns SIGTERM/SIGUSR1 into a flag (handlers restored on exit).

    Outside the main thread (where Python cannot install handlers) it never fires.
    """

    def __init__(self, signals=SIGNALS):
        self.signals = signals
        self.received = None
        self._previous = {}

    def _handle(self, signum, _frame):
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
