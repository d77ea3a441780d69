"""docs/cli/*.txt: committed --help output of every command line, regenerated and compared.

The table of commands is tools/update_cli_docs.COMMANDS (one list for the tool and this test).
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HINT = 'run python tools/update_cli_docs.py'


def _load_tool():
    # tools/ is a folder of scripts, not a package: load the file directly.
    spec = importlib.util.spec_from_file_location('update_cli_docs', os.path.join(ROOT, 'tools', 'update_cli_docs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.mark.parametrize('name,args', tool.COMMANDS, ids=[name for name, _ in tool.COMMANDS])
def test_help_matches_docs(name, args):
    text = tool.help_text(args)
    committed = tool.read_doc(name)
    assert committed is not None, f'docs/cli/{name}.txt is missing: {HINT}'
    assert text == committed, f'docs/cli/{name}.txt is stale: {HINT}'
    # The pinned width is honoured (a wrap at the caller's terminal width would show up here).
    assert max(len(line) for line in text.splitlines()) <= tool.COLUMNS


def test_no_orphan_docs():
    assert tool.orphan_docs() == [], f'docs/cli has files no command produces: {HINT}'


def _subcommands_in_table(program_args):
    """Subcommand names the table lists right after `program_args` (e.g. ['-m', 'schedulers'])."""
    n = len(program_args)
    return {args[n] for _, args in tool.COMMANDS
            if args[:n] == program_args and len(args) == n + 2 and args[-1] == '--help'}


def _argparse_subcommands(parser):
    import argparse
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def test_every_subcommand_is_listed():
    """A subcommand added to a program without a table entry would otherwise go undocumented."""
    import dataset_tool
    from schedulers import __main__ as schedulers_main
    from scripts import study_grid
    found = {
        ('dataset_tool.py',): set(dataset_tool.main.commands),
        ('-m', 'scripts.study_grid'): set(study_grid.cli.commands),
        ('-m', 'schedulers'): _argparse_subcommands(schedulers_main.build_parser()),
    }
    for program, names in found.items():
        assert names, f'no subcommands found for {program}'
        assert _subcommands_in_table(list(program)) == names, f'{program}: update COMMANDS in tools/update_cli_docs.py'


def test_help_text_ignores_callers_terminal():
    """A narrow terminal or forced colour in the caller's environment does not change the text."""
    args = ['-m', 'schedulers', 'show', '--help']
    hostile = dict(os.environ, COLUMNS='40', FORCE_COLOR='1', PYTHON_COLORS='1', CLICOLOR_FORCE='1')
    text = tool.help_text(args, base_env=hostile)
    assert text == tool.help_text(args)
    assert max(len(line) for line in text.splitlines()) > 40  # wrapped at COLUMNS=100, not 40
