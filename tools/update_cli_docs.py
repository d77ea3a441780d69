"""Regenerate docs/cli/*.txt: the --help text of every user-facing command line.

    python tools/update_cli_docs.py            # rewrite the files that changed, delete orphans
    python tools/update_cli_docs.py --check    # write nothing; exit 1 and name the stale files

tests/test_cli_docs.py runs the same COMMANDS table, so a flag added without refreshing the docs fails
the test suite.

Each command runs in a subprocess from the repository root with a pinned environment (COLUMNS, no
colour), because click and argparse wrap help text at the terminal width: without the pin, the text
would depend on the terminal (or pipe) the tool happened to run in.
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS_DIR = os.path.join(ROOT, 'docs', 'cli')
COLUMNS = 100

# name (-> docs/cli/<name>.txt), interpreter arguments. Subcommands are named <program>-<subcommand>.
COMMANDS = [
    ('train', ['train.py', '--help']),
    ('generate', ['generate.py', '--help']),
    ('calc_metrics', ['calc_metrics.py', '--help']),
    ('projector', ['projector.py', '--help']),
    ('style_mixing', ['style_mixing.py', '--help']),
    ('dataset_tool', ['dataset_tool.py', '--help']),
    ('dataset_tool-celebamask', ['dataset_tool.py', 'celebamask', '--help']),
    ('dataset_tool-verify', ['dataset_tool.py', 'verify', '--help']),
    ('schedulers', ['-m', 'schedulers', '--help']),
    ('schedulers-list', ['-m', 'schedulers', 'list', '--help']),
    ('schedulers-show', ['-m', 'schedulers', 'show', '--help']),
    ('schedulers-plot', ['-m', 'schedulers', 'plot', '--help']),
    ('study_grid', ['-m', 'scripts.study_grid', '--help']),
    ('study_grid-commands', ['-m', 'scripts.study_grid', 'commands', '--help']),
    ('study_grid-indices', ['-m', 'scripts.study_grid', 'indices', '--help']),
    ('study_grid-list', ['-m', 'scripts.study_grid', 'list', '--help']),
    ('study_grid-missing', ['-m', 'scripts.study_grid', 'missing', '--help']),
    ('report', ['-m', 'scripts.report', '--help']),
]

# Variables that switch colour on or change the wrap width; removed from the child's environment.
_UNSET = ('FORCE_COLOR', 'PYTHON_COLORS', 'CLICOLOR_FORCE', 'LINES', 'PYTHONSTARTUP')


def help_env(base=None):
    """The environment the help commands run in.

    Args:
        base: environment to start from (default os.environ).

    Returns:
        A new dict with COLUMNS pinned, colour off and UTF-8 output.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _UNSET}
    env.update(COLUMNS=str(COLUMNS), NO_COLOR='1', TERM='dumb', PYTHONIOENCODING='utf-8')
    return env


def help_text(args, python=None, base_env=None):
    """Run one help command and return its stdout.

    Args:
        args: interpreter arguments, e.g. ['-m', 'schedulers', 'show', '--help'].
        python: interpreter (default: interpreter(), i.e. this one).
        base_env: environment to start from (default os.environ); see help_env.

    Returns:
        The help text, normalised so that it does not depend on the interpreter's file name.

    Raises:
        RuntimeError: the command exited non-zero (its stderr is in the message).
    """
    python = python or interpreter()
    proc = subprocess.run([python, *args], cwd=ROOT, env=help_env(base_env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, encoding='utf-8', timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(args)} exited with {proc.returncode}:\n{proc.stderr.strip()}')
    exe = os.path.basename(python)
    if exe != 'python':  # last resort (see interpreter()); the wrapping of that line may still differ
        proc.stdout = proc.stdout.replace(f'{exe} -m ', 'python -m ')
    return proc.stdout


def interpreter():
    """sys.executable, called by the name 'python' where a same-file sibling of that name exists.

    scripts.study_grid writes basename(sys.executable) into its usage line, so 'python3 -m pytest' and
    'python -m pytest' would otherwise produce different (and differently wrapped) help text.
    """
    sibling = os.path.join(os.path.dirname(sys.executable), 'python')
    try:
        if os.path.samefile(sibling, sys.executable):
            return sibling
    except OSError:
        pass
    return sys.executable


def doc_path(name):
    """docs/cli/<name>.txt (absolute)."""
    return os.path.join(DOCS_DIR, name + '.txt')


def read_doc(name):
    """The committed help text of `name`, or None when the file does not exist."""
    try:
        with open(doc_path(name), encoding='utf-8', newline='') as f:
            return f.read()
    except FileNotFoundError:
        return None


def orphan_docs():
    """Files in docs/cli that no entry of COMMANDS produces (e.g. left over from a removed subcommand)."""
    known = {name + '.txt' for name, _ in COMMANDS}
    if not os.path.isdir(DOCS_DIR):
        return []
    return sorted(f for f in os.listdir(DOCS_DIR) if f.endswith('.txt') and f not in known)


def _write(path, text):
    sys.path.insert(0, ROOT)  # dnnlib lives in the repository root; this file is run as tools/...
    import dnnlib
    dnnlib.util.atomic_write_text(path, text)
    os.chmod(path, 0o644)  # mkstemp creates 0600


def main(argv=None):
    """Rewrite (or, with --check, compare) every docs/cli file. Returns the exit status."""
    parser = argparse.ArgumentParser(prog='python tools/update_cli_docs.py', description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true', help='write nothing; exit 1 when a file is stale')
    args = parser.parse_args(argv)
    stale = []
    for name, cmd in COMMANDS:
        text = help_text(cmd)
        if text == read_doc(name):
            continue
        stale.append(name)
        if not args.check:
            _write(doc_path(name), text)
            print(f'wrote docs/cli/{name}.txt')
    for orphan in orphan_docs():
        stale.append(orphan)
        if not args.check:
            os.remove(os.path.join(DOCS_DIR, orphan))
            print(f'removed docs/cli/{orphan} (no command produces it)')
    if args.check and stale:
        print(f'stale: {", ".join(stale)}; run python tools/update_cli_docs.py', file=sys.stderr)
        return 1
    if not stale:
        print(f'all {len(COMMANDS)} files in docs/cli are up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
