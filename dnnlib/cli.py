"""Exit statuses shared by every command-line script, and click command classes that keep them.

    0    success (also: a finished run asked to train again)
    1    a failure while working (a damaged file, a full disk, a failed download), one 'Error:' line
    2    a usage error (a bad or missing option, an input that does not fit), one 'Error:' line
    75   stopped by SIGTERM or SIGUSR1 after saving what can be continued (EX_TEMPFAIL: run it again)
    130  interrupted by SIGINT (Ctrl-C), the shell's 128 + 2

click alone ends a Ctrl-C with 'Aborted!' and status 1, which a job script cannot tell from a failure.
"""

import sys

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


class _Interruptible:
    """Mixin for click commands: Ctrl-C prints one line and exits EXIT_INTERRUPTED."""

    interrupted_line = 'Interrupted.'

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort:  # click's wrapper of KeyboardInterrupt (it has echoed a newline already)
            click.echo(self.interrupted_line, err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        # Without standalone mode, click returns ctx.exit(code)'s code, or the callback's return value.
        sys.exit(code if isinstance(code, int) else 0)


class Command(_Interruptible, click.Command):
    """click.Command with the exit statuses above."""


class Group(_Interruptible, click.Group):
    """click.Group with the exit statuses above."""


def command(interrupted_line='Interrupted.', **kwargs):
    """@click.command(...) for a script: `interrupted_line` is what Ctrl-C prints before exiting 130."""
    cls = type('ScriptCommand', (Command,), dict(interrupted_line=interrupted_line))
    return click.command(cls=cls, **kwargs)
