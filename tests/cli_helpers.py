"""Checks the CLI tests share: a failure is exactly one 'Error:' line naming what went wrong."""


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
