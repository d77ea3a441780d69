"""report.html: one self-contained page (no external files) with the report's tables and figures.

Figures are embedded as base64 PNG data URIs, so the page can be mailed or copied alone. Sections
are given as (heading, html) pairs built by the helpers below from the same data as report.md.
"""

import base64
import html
import os
import re

STYLE = '''
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
td.best { font-weight: bold; }
td.worst { text-decoration: underline double; }
td.missing { color: #999; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em 0; }
figure.memo { display: inline-block; width: 16em; vertical-align: top; font-size: small; }
figure.memo img { width: 7em; image-rendering: pixelated; margin: 0.2em; }
p.note { color: #555; }
'''


def esc(text):
    return html.escape(str(text))


def table_html(header, rows, classes=None):
    """An HTML table; rows are lists of cell texts, classes (optional) a parallel list of CSS classes."""
    out = ['<table>', '<tr>' + ''.join(f'<th>{esc(h)}</th>' for h in header) + '</tr>']
    for i, row in enumerate(rows):
        cls = classes[i] if classes else [''] * len(row)
        out.append('<tr>' + ''.join(f'<td class="{c}">{esc(t)}</td>' if c else f'<td>{esc(t)}</td>'
                                    for t, c in zip(row, cls)) + '</tr>')
    out.append('</table>')
    return '\n'.join(out)


def _inline(text):
    """Escape, then turn the report's own Markdown marks (**x**, <u>x</u>, `x`) back into tags."""
    out = esc(text)
    out = re.sub(r'\*\*(.+?)\*\*', r'<b>\1</b>', out)
    out = re.sub(r'&lt;u&gt;(.+?)&lt;/u&gt;', r'<u>\1</u>', out)
    return re.sub(r'`(.+?)`', r'<code>\1</code>', out)


def markdown_html(md):
    """The subset of Markdown the report writes (### headings, pipe tables, paragraphs) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip('|').split('|')] for line in table if not set(line) <= set('|-:')]
            out.append('<table>' + '<tr>' + ''.join(f'<th>{_inline(c)}</th>' for c in rows[0]) + '</tr>' +
                       ''.join('<tr>' + ''.join(f'<td>{_inline(c)}</td>' for c in r) + '</tr>' for r in rows[1:]) +
                       '</table>')
            table.clear()
    for line in md.splitlines():
        if line.startswith('|'):
            table.append(line)
            continue
        flush()
        if line.startswith('### '):
            out.append(f'<h3>{_inline(line[4:])}</h3>')
        elif line.startswith('## '):
            out.append(f'<h2>{_inline(line[3:])}</h2>')
        elif line.strip():
            out.append(f'<p>{_inline(line)}</p>')
    flush()
    return '\n'.join(out)


def figure_html(name, png_bytes):
    data = base64.b64encode(png_bytes).decode('ascii')
    return f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}"><figcaption>{esc(name)}</figcaption></figure>'


def memorised_panel(memorised):
    """Each most memorised sample (its thumbnail, when the record stores one) beside its nearest training image."""
    items = []
    for t in memorised:
        caption = (f'generated image {t["gen_index"]} ({os.path.basename(os.path.normpath(t["run_dir"]))}, '
                   f'{t["kimg"]} kimg) and its nearest training image {t["dataset"]} #{t["train_index"]}: '
                   f'ratio {t["ratio"]:.3f}')
        gen = (f'<img alt="generated" src="data:image/png;base64,{t["image_png"]}">' if t.get('image_png') else
               '<p class="note">(not stored)</p>')
        real = (f'<img alt="training" src="data:image/png;base64,{base64.b64encode(t["image"]).decode("ascii")}">'
                if t.get('image') else '<p class="note">(training image not readable here)</p>')
        items.append(f'<figure class="memo">{gen}{real}<figcaption>{esc(caption)}</figcaption></figure>')
    note = paragraph('Left: the generated image (a thumbnail the metric stores for its 8 most memorised samples); '
                     'right: its nearest training image.', note=True)
    return note + '\n'.join(items)


def paragraph(text, note=False):
    return f'<p class="note">{esc(text)}</p>' if note else f'<p>{esc(text)}</p>'


def page(title, sections):
    """The whole page: title, then each (heading, html) section (heading None: no heading)."""
    body = [f'<h1>{esc(title)}</h1>']
    for heading, content in sections:
        if heading:
            body.append(f'<h2>{esc(heading)}</h2>')
        body.append(content)
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n'
            + '\n'.join(body) + '\n</body>\n</html>\n')
