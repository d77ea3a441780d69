"""README.md, docs/ and scripts/ name no path outside the repository (a development machine's folders,
or relative paths that climb out of the checkout); their relative Markdown links point at real files."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ('README.md', 'docs', 'scripts')
THIS_FILE = os.path.abspath(__file__)

# Folders that exist on a development machine, not in a user's checkout. The lookbehind keeps URLs
# (https://host/home/...) and words that merely end in a banned name from matching.
_MACHINE_PATH = re.compile(r'(?<![\w.:/-])(/work/|/home/|/root/|/Users/|/mnt/|/tmp/)|\bshared/reference\b')
_RELATIVE = re.compile(r'(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)')
_MD_LINK = re.compile(r'\]\(([^)\s]+)\)')


def scanned_files(root=ROOT):
    """Every file under SCANNED (sorted), except this test."""
    found = []
    for entry in SCANNED:
        path = os.path.join(root, entry)
        if os.path.isfile(path):
            found.append(path)
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            found += [os.path.join(folder, f) for f in sorted(files) if not f.endswith('.pyc')]
    return [f for f in found if os.path.abspath(f) != THIS_FILE]


def _inside(path, root):
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)


def _link_problem(target, folder, root):
    """Why a Markdown link target is bad, or None; URLs, mail links and in-page anchors are not checked."""
    if re.match(r'^[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
        return None
    resolved = os.path.join(folder, target.split('#')[0])
    if not _inside(resolved, root):
        return f'link {target} leaves the repository'
    return None if os.path.exists(resolved) else f'link {target} points at no file'


def path_problems(file, root=ROOT):
    """'file:line: reason' for each outside path named in `file`."""
    with open(file, encoding='utf-8', errors='replace') as f:
        lines = f.read().splitlines()
    folder = os.path.dirname(file)
    rel = os.path.relpath(file, root)
    problems = []
    for number, line in enumerate(lines, 1):
        problems += [f'{rel}:{number}: names {m.group(0)!r}' for m in _MACHINE_PATH.finditer(line)]
        problems += [f'{rel}:{number}: {m.group(1)} leaves the repository' for m in _RELATIVE.finditer(line)
                     if not _inside(os.path.join(folder, m.group(1)), root)]
        if file.endswith('.md'):
            problems += [f'{rel}:{number}: {p}' for p in
                         (_link_problem(m.group(1), folder, root) for m in _MD_LINK.finditer(line)) if p]
    return problems


def test_scans_the_docs_and_scripts():
    names = {os.path.relpath(f, ROOT) for f in scanned_files()}
    assert {'README.md', os.path.join('docs', 'study.md'), os.path.join('scripts', 'demo.py')} <= names


def test_no_path_outside_the_repository():
    problems = [p for f in scanned_files() for p in path_problems(f)]
    assert problems == [], 'paths outside the repository:\n' + '\n'.join(problems)


def test_no_internal_working_rules():
    assert not os.path.exists(os.path.join(ROOT, 'docs', 'dev-helpers.md'))


@pytest.mark.parametrize('text', [
    'see ../shared/reference/paper.txt', 'see `/work/shared/x.md`', 'cd /home/alice/repo',
    'python ../../outside.py', 'the [paper](../../paper.pdf)', 'the [notes](missing.md)',
    'facts in shared/reference/upstream-facts.md',
])
def test_catches_outside_paths(tmp_path, text):
    (tmp_path / 'docs').mkdir()
    doc = tmp_path / 'docs' / 'page.md'
    doc.write_text(f'intro\n{text}\n', encoding='utf-8')
    problems = path_problems(str(doc), root=str(tmp_path))
    assert problems and all(p.startswith(os.path.join('docs', 'page.md') + ':2:') for p in problems)


@pytest.mark.parametrize('text', [
    'see [the study](study.md) and [the top](../README.md#usage)', 'https://example.org/home/x',
    '`~/.cache/dnnlib`', 'python dataset_tool.py --dest=datasets/study', 'runs/.../network.pkl',
    'scripts/run_grid.sh DATA RUNS', 'cd "$(dirname "$0")/.."',
])
def test_accepts_paths_inside(tmp_path, text):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'study.md').write_text('x', encoding='utf-8')
    (tmp_path / 'README.md').write_text('x', encoding='utf-8')
    doc = tmp_path / 'docs' / 'page.md'
    doc.write_text(text + '\n', encoding='utf-8')
    assert path_problems(str(doc), root=str(tmp_path)) == []


# A reader of the repository has none of the development team's reference notes, so no file may cite
# them by name or by section label ("anchor B1", "upstream-facts 10.1").
_NOTE_CITATION = re.compile(r'\banchors? [A-Z]\d|\b(upstream-facts|sched-metrics-anchors|user-pain)\b')


def note_citations(text):
    return [number for number, line in enumerate(text.splitlines(), 1) if _NOTE_CITATION.search(line)]


def _source_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d not in ('__pycache__', 'build'))
        yield from (os.path.join(folder, f) for f in sorted(files)
                    if f.endswith(('.py', '.md', '.sh', '.cu', '.cpp', '.h')))


def test_no_citation_of_notes_outside_the_repository():
    found = []
    for path in _source_files():
        if os.path.abspath(path) == THIS_FILE:
            continue
        with open(path, encoding='utf-8', errors='replace') as f:
            found += [f'{os.path.relpath(path, ROOT)}:{n}' for n in note_citations(f.read())]
    assert found == [], 'cites notes a reader does not have:\n' + '\n'.join(found)


@pytest.mark.parametrize('text, cited', [
    ('# see anchor B1 for the resize', True), ('(anchors B1/B5)', True), ('upstream-facts 10.1', True),
    ('# the anchor point of the crop', False), ('upstream facts differ', False), ('Anchor: B', False),
])
def test_note_citation_pattern(text, cited):
    assert bool(note_citations(text)) == cited
