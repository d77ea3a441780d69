"""The paper's published Tables 3-6 (scripts/paper_tables.json) beside a report's tables.

The JSON holds the values exactly as printed in the paper (3 decimals, means included) and its marks
(best two bold, worst two double-underlined), keyed by table number and preset name.
"""

import json
import os

PAPER_TABLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'paper_tables.json')


def load_paper_tables(path=PAPER_TABLES):
    """{table number (int): {preset: dict(values=[6 floats], marks=[6])}} plus group and kind per table."""
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    return {int(n): t for n, t in data['tables'].items()}


def compare_table(table, paper_table):
    """Ours beside the paper's for one table.

    Args:
        table:       scripts.report.build_table() output (columns: 5 datasets + mean).
        paper_table: one entry of load_paper_tables().

    Returns:
        list of dict(preset, label, cells=[dict(ours, paper, diff)]) with diff = ours - paper (None
        where we have no value).
    """
    rows = []
    for row in table['rows']:
        paper_values = paper_table['rows'][row['preset']]['values']
        cells = []
        for cell, paper in zip(row['cells'], paper_values):
            ours = cell['value']
            cells.append(dict(ours=ours, paper=paper, diff=None if ours is None else ours - paper))
        rows.append(dict(preset=row['preset'], label=row['label'], cells=cells))
    return rows


def _fmt(value, signed=False):
    if value is None:
        return '–'
    return f'{value:+.3f}' if signed else f'{value:.3f}'


def comparison_markdown(number, title, columns, rows):
    """One comparison table in Markdown: each cell 'ours / paper (diff)'."""
    lines = [f'### Table {number} against the paper: {title}', '',
             'Each cell: ours / paper (ours - paper).', '',
             '| schedule | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
    for row in rows:
        texts = [f'{_fmt(c["ours"])} / {_fmt(c["paper"])} ({_fmt(c["diff"], signed=True)})' for c in row['cells']]
        lines.append(f'| {row["label"]} | ' + ' | '.join(texts) + ' |')
    return '\n'.join(lines) + '\n'


def comparison_text(number, title, columns, rows):
    """The same as fixed-width text for the terminal: three numbers per cell."""
    width = 25
    head = f'{"schedule":<9}' + ''.join(f'{c:>{width}}' for c in columns)
    lines = [f'Table {number}: {title}  (ours / paper / ours-paper)', head]
    for row in rows:
        cells = ''.join(f'{_fmt(c["ours"]) + " / " + _fmt(c["paper"]) + " / " + _fmt(c["diff"], True):>{width}}'
                        for c in row['cells'])
        lines.append(f'{row["label"]:<9}' + cells)
    return '\n'.join(lines)
