"""The package layers import one way only (docs/design.md): a lower layer never imports a higher one."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_SCRIPTS = {'train', 'generate', 'calc_metrics', 'dataset_tool', 'legacy', 'projector', 'style_mixing'}
PROJECT = {'dnnlib', 'torch_utils', 'schedulers', 'training', 'patches', 'metrics', 'scripts',
           'dataset_build'} | ROOT_SCRIPTS

# package -> project packages it may import (itself always allowed)
ALLOWED = {
    'dnnlib': set(),
    'torch_utils': {'dnnlib'},
    'schedulers': {'dnnlib'},
    'training': {'dnnlib', 'torch_utils', 'schedulers', 'patches'},
    'patches': {'dnnlib', 'torch_utils'},
    'metrics': {'dnnlib', 'torch_utils', 'training', 'patches'},
    'dataset_build': {'dnnlib', 'torch_utils'},
}


def _imported_top_levels(path):
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split('.')[0], alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split('.')[0], node.module


def _package_files(package):
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith('.py'):
                yield os.path.join(dirpath, name)


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_imports_point_down(package):
    violations = []
    for path in _package_files(package):
        rel = os.path.relpath(path, ROOT)
        for top, full in _imported_top_levels(path):
            if top not in PROJECT or top == package:
                continue
            allowed = ALLOWED[package]
            if package == 'metrics' and full.startswith('training.training_loop'):
                allowed = set()
            if top not in allowed:
                violations.append(f'{rel} imports {full}')
    assert not violations, 'layering violations:\n' + '\n'.join(violations)


def test_layering_check_sees_imports(tmp_path):
    """Guard against a checker that silently finds nothing: it must parse real import statements."""
    src = tmp_path / 'x.py'
    src.write_text('import torch_utils.misc\nfrom training import networks\nfrom . import sibling\n')
    found = sorted(top for top, _ in _imported_top_levels(str(src)))
    assert found == ['torch_utils', 'training']
