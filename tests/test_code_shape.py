"""Function size limits of the training orchestration (training/ and train.py): at most 50 lines and 8
parameters each, so no driver function grows back into one long argument list.

Excepted: the constructors that keep upstream's shape (the networks, the augmentation pipe, the loss),
whose keyword lists are the option names users know.
"""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 50
MAX_PARAMS = 8
UPSTREAM_SHAPED = {'training/networks.py', 'training/augment.py:AugmentPipe.__init__',
                   'training/loss.py:StyleGAN2Loss.__init__'}


def _functions(path):
    """(qualified name, node) of every function in a file, methods as Class.name."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from walk(child, prefix + child.name + '.')
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + '.')
    yield from walk(tree, '')


def _param_count(node):
    """Parameters a caller can pass (self/cls not counted; *args and **kwargs count one each)."""
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ('self', 'cls')]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def shape_violations(paths, root=ROOT):
    out = []
    for path in paths:
        rel = os.path.relpath(path, root).replace(os.sep, '/')
        for name, node in _functions(path):
            if rel in UPSTREAM_SHAPED or f'{rel}:{name}' in UPSTREAM_SHAPED:
                continue
            lines, params = node.end_lineno - node.lineno + 1, _param_count(node)
            if lines > MAX_LINES:
                out.append(f'{rel}:{node.lineno} {name}: {lines} lines')
            if params > MAX_PARAMS:
                out.append(f'{rel}:{node.lineno} {name}: {params} parameters')
    return out


def test_training_functions_are_short_with_few_parameters():
    paths = sorted(glob.glob(os.path.join(ROOT, 'training', '*.py'))) + [os.path.join(ROOT, 'train.py')]
    violations = shape_violations(paths)
    assert not violations, 'functions over the limits:\n' + '\n'.join(violations)


def test_the_check_sees_long_functions_and_long_argument_lists(tmp_path):
    """Guard against a checker that finds nothing: a long function and a wide method are both reported."""
    body = '\n'.join(f'    x{i} = {i}' for i in range(MAX_LINES))
    path = tmp_path / 'mod.py'
    path.write_text(f'def long():\n{body}\n\n\nclass C:\n    def wide(self, a, b, c, d, e, f, g, h, *rest):\n'
                    f'        pass\n\n    def fine(self, a, b, c, d, e, f, g, h):\n        pass\n')
    assert shape_violations([str(path)], root=str(tmp_path)) == [
        f'mod.py:1 long: {MAX_LINES + 1} lines', f'mod.py:{MAX_LINES + 5} C.wide: 9 parameters']
