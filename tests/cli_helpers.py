"""Checks the CLI tests share: a failure is exactly one 'Error:' line naming what went wrong."""

import time


def one_error_line(output, *needles):
    """The single 'Error:' line of `output` (no traceback), which must contain every needle."""
    lines = [line for line in output.splitlines() if line.startswith('Error:')]
    assert len(lines) == 1, output
    assert 'Traceback' not in output, output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def failed_with_one_error_line(result, *needles):
    """A click CliRunner result that exited non-zero with one_error_line(...)."""
    assert result.exit_code != 0, result.output
    return one_error_line(result.output, *needles)


# Documented exit statuses (docs/exit-codes.md, dnnlib/cli.py).
EXIT_FAILURE, EXIT_USAGE, EXIT_PREEMPTED, EXIT_INTERRUPTED = 1, 2, 75, 130


def _tree(root):
    """{relative path: sha256 of the file, or 'dir'} of everything under root (None when absent)."""
    import hashlib
    import os
    if not os.path.lexists(root):
        return None
    if not os.path.isdir(root):
        with open(root, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = 'dir'
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


class TreeState:
    """What the given paths hold now (files by content), to prove a failed command changed nothing."""

    def __init__(self, *roots):
        self.roots = [str(r) for r in roots]
        self.state = [_tree(r) for r in self.roots]

    def assert_unchanged(self):
        now = [_tree(r) for r in self.roots]
        for root, before, after in zip(self.roots, self.state, now):
            assert after == before, f'{root} changed: before {before}, after {after}'


def refused(result, code, *needles, state=None):
    """A command (click Result or subprocess CompletedProcess) that failed as documented.

    Asserts: exit status `code`, exactly one 'Error:' line containing every needle (a flag or a path),
    no traceback nor 'Exception ignored' noise, and, given a TreeState, that nothing under its paths
    was written, removed or left half-written. Returns the error line.
    """
    if hasattr(result, 'exit_code'):
        status, output = result.exit_code, result.output
    else:
        status, output = result.returncode, (result.stdout or '') + (result.stderr or '')
    assert status == code, f'exit status {status}, expected {code}:\n{output}'
    assert 'Exception ignored' not in output, output
    line = one_error_line(output, *needles)
    if state is not None:
        state.assert_unchanged()
    return line


def wait_while_running(proc, ready, timeout, interval):
    """Poll `ready()` until true; fail if `proc` ends first, or after `timeout` s (a hang guard only)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f'finished before it could be signalled: {proc.communicate()}'
        assert time.monotonic() < deadline, 'never reached the state to signal'
        time.sleep(interval)
