"""The report's why-FID-moved part: pull, memorisation and PRDC per schedule and point (mean ± sd over
seeds, paired with DDCLR), the pull figure, and the most memorised samples beside their training images."""

import io
import json
import os
import zipfile

import PIL.Image
import pytest

from scripts import report, study_grid as sg

POINTS = (40, 100)


def _zip_with_images(path, n):
    """A dataset zip of n one-colour PNGs; image i has red value i (so the panel's image is identifiable)."""
    with zipfile.ZipFile(path, 'w') as zf:
        for i in range(n):
            buf = io.BytesIO()
            PIL.Image.new('RGB', (4, 4), (i, 0, 0)).save(buf, format='png')
            zf.writestr(f'{i:05d}.png', buf.getvalue())
        zf.writestr('dataset.json', json.dumps(dict(labels=None, generated=[f'{i:05d}.png' for i in range(0, n, 5)])))


def _write_run(run_dir, zip_path, preset, seed, pull_at, ratio_offset, num_gen=None):
    """Metric lines as train.py writes them for one run: pull nn = pull_at[kimg], memo top lists, prdc values."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump({'training_set_kwargs': {'path': zip_path}, 'lr_schedule': preset, 'random_seed': seed}, f)
    label = '50k' if num_gen is None else str(num_gen)
    for kimg in POINTS:
        extra = {} if num_gen is None else {'num_gen': num_gen}
        lines = {
            'pull50k_full': dict(results={f'pull{label}_full_nn': pull_at[kimg], f'pull{label}_full_base': 0.2},
                                 uncertainty={f'pull{label}_full_nn': {'ci95': [pull_at[kimg] - 0.01, pull_at[kimg] + 0.01]}}),
            'memo50k_full': dict(results={f'memo{label}_full': 0.01, f'memo{label}_full_nn_ratio': 1.1},
                                 details=dict(seed=None, top=[dict(gen_index=g, train_index=g + 3, ratio=ratio_offset + g / 100,
                                                                   distance=1.0, image_png=f'R0VO{preset}{seed}{g}')
                                                              for g in range(3)])),
            'prdc50k_full': dict(results={f'prdc{label}_full_precision': 0.7, f'prdc{label}_full_recall': 0.5}),
        }
        for metric, record in lines.items():
            with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), 'a') as f:
                f.write(json.dumps(dict(record, metric=metric, kimg=kimg, **extra)) + '\n')


def test_why_sections_tables_pairs_figure_and_panel(tmp_path):
    zip_path = str(tmp_path / 'Mix-dataset1.zip')
    _zip_with_images(zip_path, 20)
    runs = tmp_path / 'runs'
    for seed in (0, 1):
        _write_run(str(runs / f'ddclr-seed{seed}'), zip_path, 'ddclr', seed, {40: 0.2, 100: 0.25 + seed / 100}, 0.5)
        _write_run(str(runs / f'fixed-seed{seed}'), zip_path, 'fixed', seed, {40: 0.3, 100: 0.45 + seed / 100}, 0.1,
                   num_gen=5000)
    summary = report.write_report(str(runs), str(tmp_path / 'out'), points=POINTS, plots=True)
    md = open(tmp_path / 'out' / 'report.md', encoding='utf-8').read()
    assert '## Why FID moved' in md and '`pull50k_full_nn`' in md
    fixed_row = next(line for line in md.splitlines() if line.startswith('| Fixed |') and '0.455' in line)
    assert '0.300 ± 0.000 (n=2)' in fixed_row and '0.455 ± 0.007 (n=2)' in fixed_row  # counts relabelled: 5k lines
    paired = summary['why']['pull50k_full_nn']['Mix-dataset']['paired']
    fixed = next(p for p in paired if p['preset'] == 'fixed')
    assert fixed['pairs'] == 2 and abs(fixed['mean_diff'] - 0.2) < 1e-9 and fixed['worse'] == 2
    assert 'prdc50k_full_precision' in summary['why'] and 'memo50k_full_nn_ratio' in summary['why']
    assert os.path.isfile(tmp_path / 'out' / 'pull_Mix-dataset.png')
    # The panel: the smallest ratios over all runs at the last point, with the nearest training image.
    top = summary['most_memorised']
    assert [t['ratio'] for t in top] == pytest.approx([0.1, 0.1, 0.11, 0.11, 0.12, 0.12, 0.5, 0.5])  # 8 of 12
    assert top[0]['train_index'] == 3 and top[0]['kimg'] == 100
    html = open(tmp_path / 'out' / 'report.html', encoding='utf-8').read()
    assert 'Most memorised generated images' in html and html.count('<figure class="memo">') == len(top)
    assert 'src="data:image/png;base64,R0VOfixed00"' in html  # the stored thumbnail beside the training image
    assert 'image_png' not in json.dumps(summary['most_memorised'])
    first = report.training_image(zip_path, top[0]['train_index'])
    assert PIL.Image.open(io.BytesIO(first)).getpixel((0, 0)) == (3, 0, 0)


def test_reports_without_the_new_metrics_have_no_why_section(tmp_path):
    runs = tmp_path / 'runs'
    run_dir = runs / 'r'
    os.makedirs(run_dir)
    (run_dir / 'training_options.json').write_text(json.dumps({'training_set_kwargs': {'path': '/d/Mix-dataset1.zip'},
                                                               'lr_schedule': 'ddclr'}))
    (run_dir / 'metric-fid50k_full.jsonl').write_text(json.dumps({'results': {'fid50k_full': 30.0}, 'kimg': 100}) + '\n')
    summary = report.write_report(str(runs), str(tmp_path / 'out'), points=POINTS, plots=False)
    assert summary['why'] == {} and summary['most_memorised'] == []
    assert 'Why FID moved' not in open(tmp_path / 'out' / 'report.md', encoding='utf-8').read()
    assert sg.METRICS[0] == sg.METRIC
