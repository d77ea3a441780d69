"""Shared by the tests that need real system services (Slurm daemons, network namespaces, a browser).

Where a service cannot be had, such a test is skipped with the reason; in CI (CI=true, where
.ci/run installs every service first) the same reason fails the test instead, so CI never passes
by skipping them.
"""

import os
import shutil
import time

import pytest


def unavailable(reason):
    """Skip the calling test with `reason`, or fail it when running in CI."""
    if os.environ.get('CI', '').lower() == 'true':
        pytest.fail(f'{reason} (CI=true: .ci/run installs this service, so it must work)', pytrace=False)
    pytest.skip(reason)


def need_root_and(*programs):
    """unavailable() unless this runs as root and every program is on PATH."""
    if os.geteuid() != 0:
        unavailable('needs root')
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        unavailable(f'not installed: {", ".join(missing)}')


def wait_until(predicate, timeout, what, interval=1.0):
    """Poll `predicate` until it returns a true value (returned); fail naming `what` after `timeout` s.

    The timeout is a hang guard, not a speed check.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout} s waiting for {what}')
        time.sleep(interval)
