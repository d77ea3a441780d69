"""report.html in a real browser (headless Chromium): the tables are laid out with their values and
marks, and every figure is decoded and drawn where the page puts it.

A copy of the page gets a small script that measures the rendered page (image sizes and places,
table cells and their computed style) into the DOM, which `chromium --dump-dom` prints; a screenshot
of the whole page then shows whether the figures' pixels are on screen.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import PIL.Image
import pytest

from service_helpers import unavailable
from test_report_replicates import replicate_runs, written  # noqa: F401 (fixtures: the hand-made grid's report)

pytestmark = pytest.mark.slow

WIDTH = 1400
PROBE = '''
<script>
window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height]; };
  const probe = {
    height: document.documentElement.scrollHeight,
    images: [...document.images].map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, box: box(i)})),
    tables: [...document.querySelectorAll('table')].map(t => ({box: box(t), rows: [...t.rows].map(r =>
      [...r.cells].map(c => ({text: c.innerText, cls: c.className, weight: getComputedStyle(c).fontWeight,
                              decoration: getComputedStyle(c).textDecorationLine, box: box(c)})))})),
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>
'''


def _chromium():
    path = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if path is None:
        unavailable('no headless Chromium installed (Debian: apt-get install chromium)')
    return path


def _browser(*args):
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    proc = subprocess.run([_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _shrink(image, size):
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image.astype(np.uint8))
    return np.asarray(image.resize(size, PIL.Image.BOX), np.float32)


def test_report_html_renders_tables_and_figures(written, tmp_path):  # noqa: F811
    out, _ = written
    with open(os.path.join(out, 'report.html'), encoding='utf-8') as f:
        page = f.read()
    probed = tmp_path / 'report.html'
    probed.write_text(page.replace('</body>', PROBE + '</body>'), encoding='utf-8')
    url = probed.as_uri()

    dom = _browser('--dump-dom', '--virtual-time-budget=5000', f'--window-size={WIDTH},1000', url)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    probe = json.loads(m.group(1).replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>').replace('&quot;', '"'))

    # Tables: laid out, with the report's values in their cells and the marks styled.
    tables = probe['tables']
    assert len(tables) >= 4
    cells = [c for t in tables for row in t['rows'] for c in row]
    assert all(t['box'][2] > 0 and t['box'][3] > 0 for t in tables)
    best = next(c for c in cells if c['text'] == '20.250 ± 0.354')
    assert best['cls'] == 'best' and int(best['weight']) >= 600 and best['box'][2] > 0   # drawn bold
    worst = [c for c in cells if c['cls'] == 'worst']
    assert worst and all('underline' in c['decoration'] for c in worst)
    numbers = [c for c in cells if re.fullmatch(r'\d+\.\d{3}( ± \d+\.\d{3})?', c['text'])]
    assert len(numbers) >= 40                                           # Table 4 alone has 8 x 6 values

    # Figures: every embedded PNG decoded at its own size and placed on the page.
    embedded = [PIL.Image.open(io.BytesIO(base64.b64decode(s)))
                for s in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    images = probe['images']
    assert len(images) == len(embedded) == 3
    for img, png in zip(images, embedded):
        assert img['complete'] and (img['w'], img['h']) == png.size and img['box'][2] > 0 and img['box'][3] > 0

    # The screenshot of the whole page shows each figure where it was placed: its pixels match the PNG
    # scaled to its box (a blank or missing figure would be white there).
    height = int(probe['height'])
    shot = tmp_path / 'shot.png'
    _browser(f'--screenshot={shot}', f'--window-size={WIDTH},{height}', '--virtual-time-budget=5000', url)
    with PIL.Image.open(shot) as s:
        screen = np.asarray(s.convert('RGB'), np.float32)
    assert screen.shape[:2] == (height, WIDTH)
    for img, png in zip(images, embedded):
        left, top, w, h = (int(round(v)) for v in img['box'])
        # Both at 1/8 of the box (8x8-pixel averages), so the browser's own resampling filter does not count.
        small = (w // 8, h // 8)
        crop = _shrink(screen[top:top + h, left:left + w], small)
        expected = _shrink(png.convert('RGB'), small)
        drawn, blank = float(np.abs(crop - expected).mean()), float(np.abs(expected - 255).mean())
        assert drawn < blank / 3, (drawn, blank)
