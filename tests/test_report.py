"""The study report reproduces the paper's Tables 3-6 from metric files holding the paper's own numbers.

The fixture turns the published tables into run directories: for every (dataset, schedule) the FID at
100 kimg is the Table 3/4 value and the minimum over 40-100 kimg is the Table 5/6 value. The report
must then print the paper's values, its means (to the paper's 3 decimals) and exactly the paper's
bold / underline marks, which are "best two" and "worst two" per column (paper section 3).
"""

import csv
import json
import os

import PIL.Image
import pytest

from scripts import report, study_grid as sg

LABELS = ['Fixed', 'CLR', 'DDCLR', 'DCLR(1)', 'DCLR(2)', 'DCLR(3)', 'ExpLR(1)', 'ExpLR(2)']
PRESETS = ['fixed', 'clr', 'ddclr', 'dclr1', 'dclr2', 'dclr3', 'exp1', 'exp2']

# Paper Tables 3-6 (columns dataset 1-5, mean). Prefix b = bold (best two), u = underlined (worst two).
PAPER = {
    3: """
Fixed 20.420 19.132 u20.810 b19.675 19.989 u20.005
CLR 20.487 b18.028 20.235 20.050 19.686 19.697
DDCLR b19.716 18.560 19.944 b19.569 b19.572 b19.472
DCLR(1) b19.529 18.929 b19.935 19.862 u20.463 19.744
DCLR(2) u20.858 u19.391 u21.556 19.866 u20.950 u20.524
DCLR(3) u20.545 b18.543 b19.790 u20.166 b19.250 b19.659
ExpLR(1) 19.829 18.869 20.318 u20.769 20.012 19.959
ExpLR(2) 19.872 u19.567 20.684 20.054 19.588 19.953""",
    4: """
Fixed u24.134 u23.711 u27.033 u25.152 u24.195 u24.845
CLR u24.194 u23.429 u25.288 u26.497 u26.377 u25.157
DDCLR b22.482 b20.549 b23.108 b22.003 b21.552 b21.939
DCLR(1) 23.291 21.290 24.685 b22.725 22.402 22.879
DCLR(2) b22.334 21.234 24.210 23.203 22.368 22.670
DCLR(3) 23.705 b20.724 23.496 23.670 b21.483 b22.616
ExpLR(1) 23.890 22.251 23.700 24.152 23.486 23.496
ExpLR(2) 23.291 21.526 b23.404 22.900 23.085 22.841""",
    5: """
Fixed u20.139 18.089 u19.382 b18.271 u19.989 u19.174
CLR b19.272 b17.397 19.100 b18.194 18.716 b18.536
DDCLR 19.716 b17.925 19.132 18.807 18.877 18.891
DCLR(1) 19.529 17.961 b18.781 18.759 b18.597 b18.726
DCLR(2) 19.742 u18.388 u19.718 u19.222 19.113 u19.237
DCLR(3) u20.087 17.939 19.050 19.022 b18.620 18.944
ExpLR(1) b19.068 18.127 b18.830 u19.167 u19.516 18.942
ExpLR(2) 19.754 u18.842 19.121 19.141 18.752 19.122""",
    6: """
Fixed 22.414 u21.865 u23.872 u24.654 u24.195 u23.400
CLR u22.467 u22.400 u24.585 u24.128 u23.554 u23.427
DDCLR 21.540 b20.179 b22.055 b21.347 b21.476 b21.319
DCLR(1) b21.431 20.917 22.529 22.725 22.389 21.998
DCLR(2) 22.334 21.234 22.351 b21.419 21.991 21.866
DCLR(3) u22.731 b20.341 22.586 21.429 b21.483 b21.714
ExpLR(1) 22.188 20.352 b22.126 22.714 22.826 22.041
ExpLR(2) b21.430 21.156 23.404 22.564 22.264 22.163""",
}
GROUP_OF_TABLE = {3: 'CelebAMask-HQ', 4: 'Mix-dataset', 5: 'CelebAMask-HQ', 6: 'Mix-dataset'}


def paper_table(number):
    """{label: [(value, mark), ...6]} with mark 'best', 'worst' or None."""
    rows = {}
    for line in PAPER[number].strip().splitlines():
        label, *cells = line.split()
        rows[label] = [(float(c.lstrip('bu')), {'b': 'best', 'u': 'worst'}.get(c[0])) for c in cells]
    return rows


def fid_points(fid100, fidmin):
    """Points whose value at 100 kimg is fid100 and whose minimum over 40..100 is fidmin.

    kimg 0 (the FFHQ network before fine-tuning, evaluated at tick 0) gets a *lower* value, so a report
    that wrongly took the minimum over all points would show it.
    """
    assert fidmin <= fid100
    return {0: fidmin - 5.0, 40: fid100 + 1.0, 60: fidmin, 80: fid100 + 0.5, 100: fid100}


def write_run(run_dir, dataset, preset, points, schedule_style):
    """A run dir in the format train.py writes (training_options.json + metric-fid50k_full.jsonl)."""
    os.makedirs(run_dir, exist_ok=True)
    schedulers = pytest.importorskip('schedulers')
    parsed = schedulers.parse_lr_schedule(schedulers.PRESETS[preset])
    if schedule_style == 'named':      # the schedule dict plus the preset name, as train.py records it
        lr_schedule = dict(parsed, preset=preset, spec=preset)
    elif schedule_style == 'flat':     # exactly what train.py records: the parsed dict
        lr_schedule = parsed
    elif schedule_style == 'nested':   # {func_name, kwargs} without a name: found by comparing dicts
        lr_schedule = {'func_name': parsed['func_name'],
                       'kwargs': {k: v for k, v in parsed.items() if k != 'func_name'}}
    else:                              # only the spec string
        lr_schedule = schedulers.PRESETS[preset]
    options = {'training_set_kwargs': {'class_name': 'training.dataset.ImageFolderDataset',
                                       'path': f'/datasets/{dataset}.zip'},
               'lr_schedule': lr_schedule, 'run_dir': run_dir}
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump(options, f, indent=2)
    with open(os.path.join(run_dir, 'metric-fid50k_full.jsonl'), 'w') as f:
        for kimg, value in sorted(points.items()):
            f.write(json.dumps({'results': {'fid50k_full': value}, 'metric': 'fid50k_full', 'total_time': 600.0,
                                'total_time_str': '10m 00s', 'num_gpus': 1,
                                'snapshot_pkl': f'network-snapshot-{kimg:06d}.pkl', 'timestamp': 1.7e9 + kimg,
                                'kimg': kimg, 'detector': {'name': 'inception', 'sha256': '0' * 64}}) + '\n')


MISSING = ('Mix-dataset1', 'fixed')   # never ran
PARTIAL = ('Mix-dataset2', 'clr')     # interrupted after 60 kimg


@pytest.fixture(scope='module')
def paper_runs(tmp_path_factory):
    """Run dirs for all 80 cells but MISSING; PARTIAL has only its 40 and 60 kimg points.

    The directory names do not contain the preset (flat 'r<i>/00000-...' layout), so the schedule must
    come from training_options.json; four recording styles are mixed.
    """
    root = tmp_path_factory.mktemp('runs')
    styles = ['named', 'flat', 'nested', 'spec']
    i = 0
    for fid_table, min_table in ((3, 5), (4, 6)):
        group = GROUP_OF_TABLE[fid_table]
        t100, tmin = paper_table(fid_table), paper_table(min_table)
        for label, preset in zip(LABELS, PRESETS):
            for col, dataset in enumerate(sg.GROUPS[group]):
                if (dataset, preset) == MISSING:
                    continue
                points = fid_points(t100[label][col][0], tmin[label][col][0])
                if (dataset, preset) == PARTIAL:
                    points = {k: points[k] for k in (0, 40, 60)}
                write_run(str(root / f'r{i:02d}' / f'00000-{dataset}-paper512'), dataset, preset, points,
                          styles[i % len(styles)])
                i += 1
    return str(root)


@pytest.fixture(scope='module')
def written(paper_runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('report'))
    summary = report.write_report(paper_runs, out)
    return out, summary


@pytest.mark.parametrize('number', [3, 5])
def test_complete_tables_match_the_paper(written, number):
    """CelebAMask-HQ tables are complete: values, means and every mark equal the paper's."""
    out, summary = written
    kind = 'fid100' if number == 3 else 'fidmin'
    table = summary['tables'][f'table{number}_{kind}_CelebAMask-HQ']
    paper = paper_table(number)
    for row in table['rows']:
        for cell, (value, mark) in zip(row['cells'], paper[row['label']]):
            assert cell['value'] == pytest.approx(value, abs=6e-4)  # means: paper rounds to 3 decimals
            assert cell['status'] == 'ok'
            assert cell['mark'] == mark, (row['label'], value)


def test_table_with_missing_and_partial_runs(written):
    """Table 4 (FID at 100 kimg, Mix): the missing and partial cells are shown, kept out of means and marks."""
    out, summary = written
    rows = {r['label']: r['cells'] for r in summary['tables']['table4_fid100_Mix-dataset']['rows']}
    paper = paper_table(4)
    assert (rows['Fixed'][0]['value'], rows['Fixed'][0]['status']) == (None, 'missing')
    assert (rows['CLR'][1]['value'], rows['CLR'][1]['status']) == (None, 'partial 2/4')
    # Means over the 4 datasets present, flagged incomplete and unranked.
    fixed_rest = [paper['Fixed'][c][0] for c in (1, 2, 3, 4)]
    clr_rest = [paper['CLR'][c][0] for c in (0, 2, 3, 4)]
    assert rows['Fixed'][5]['value'] == pytest.approx(sum(fixed_rest) / 4, abs=1e-12)
    assert rows['CLR'][5]['value'] == pytest.approx(sum(clr_rest) / 4, abs=1e-12)
    assert (rows['Fixed'][5]['status'], rows['Fixed'][5]['mark']) == ('incomplete', None)
    assert (rows['CLR'][5]['status'], rows['CLR'][5]['mark']) == ('incomplete', None)
    # Dataset 1 without Fixed (24.134, a paper 'worst'): CLR 24.194 and ExpLR(1) 23.890 are now the worst two.
    assert {l: rows[l][0]['mark'] for l in LABELS} == {
        'Fixed': None, 'CLR': 'worst', 'DDCLR': 'best', 'DCLR(1)': None, 'DCLR(2)': 'best', 'DCLR(3)': None,
        'ExpLR(1)': 'worst', 'ExpLR(2)': None}
    # Mean column ranked over the 6 complete rows: best DDCLR 21.939, DCLR(3) 22.616; worst ExpLR(1) 23.496,
    # DCLR(1) 22.879.
    assert {l: rows[l][5]['mark'] for l in LABELS} == {
        'Fixed': None, 'CLR': None, 'DDCLR': 'best', 'DCLR(1)': 'worst', 'DCLR(2)': None, 'DCLR(3)': 'best',
        'ExpLR(1)': 'worst', 'ExpLR(2)': None}
    # Untouched columns keep the paper's marks.
    for col in (2, 3, 4):
        assert [rows[l][col]['mark'] for l in LABELS] == [paper[l][col][1] for l in LABELS]


def test_min_table_needs_all_four_points(written):
    """Table 6: the partial run has no minimum; kimg 0 (lower than every value) never enters a minimum."""
    out, summary = written
    rows = {r['label']: r['cells'] for r in summary['tables']['table6_fidmin_Mix-dataset']['rows']}
    paper = paper_table(6)
    assert rows['CLR'][1]['status'] == 'partial 2/4' and rows['CLR'][1]['value'] is None
    assert rows['Fixed'][0]['status'] == 'missing'
    for label in LABELS:
        for col in range(5):
            if rows[label][col]['value'] is not None:
                assert rows[label][col]['value'] == pytest.approx(paper[label][col][0], abs=1e-9)


def test_markdown_marks_and_texts(written):
    out, _ = written
    md = open(os.path.join(out, 'report.md'), encoding='utf-8').read()
    assert '| DDCLR | **19.716** | 18.560 | 19.944 | **19.569** | **19.572** | **19.472** |' in md  # Table 3
    assert '| DCLR(2) | <u>20.858</u> | <u>19.391</u> | <u>21.556</u> | 19.866 | <u>20.950</u> | <u>20.524</u> |' in md
    fixed_mean = sum(paper_table(4)['Fixed'][c][0] for c in (1, 2, 3, 4)) / 4
    assert (f'| Fixed | missing | <u>23.711</u> | <u>27.033</u> | <u>25.152</u> | <u>24.195</u> | '
            f'{fixed_mean:.3f}* |') in md
    assert '- missing (no run dir): 1 of 80 runs: Mix-dataset1/fixed' in md
    assert '- Mix-dataset2/clr: partial, points at kimg [40, 60]' in md


def test_csv_files(written):
    out, _ = written
    with open(os.path.join(out, 'table4_fid100_Mix-dataset.csv'), newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['schedule', 'preset', 'Mix-dataset1', 'Mix-dataset2', 'Mix-dataset3', 'Mix-dataset4',
                       'Mix-dataset5', 'mean']
    by_label = {r[0]: r for r in rows[1:]}
    assert [r[0] for r in rows[1:]] == LABELS
    assert by_label['Fixed'][2] == 'missing'
    assert by_label['CLR'][3] == 'partial 2/4'
    assert float(by_label['DDCLR'][2]) == 22.482
    assert float(by_label['DDCLR'][7]) == pytest.approx((22.482 + 20.549 + 23.108 + 22.003 + 21.552) / 5, abs=1e-12)
    with open(os.path.join(out, 'points.csv'), newline='') as f:
        points = list(csv.DictReader(f))
    assert len(points) == 78 * 5 + 3  # 78 complete runs with kimg 0..100, the partial one with 0, 40, 60
    ddclr1 = {int(p['kimg']): float(p['value']) for p in points if (p['dataset'], p['preset']) == ('CelebAMask-HQ1', 'ddclr')}
    assert ddclr1 == fid_points(19.716, 19.716)


def test_summary_and_identification(written):
    out, summary = written
    with open(os.path.join(out, 'summary.json')) as f:
        on_disk = json.load(f)
    assert on_disk['finished'] == summary['finished'] == 78
    assert len(on_disk['runs']) == 79
    assert {r['found_by'] for r in on_disk['runs']} == {'recorded name', 'recorded schedule'}
    assert on_disk['notes'] == {'unrecognised': [], 'duplicates': []}


def test_figures_are_valid_pngs(written):
    pytest.importorskip('matplotlib')
    out, _ = written
    for name in ('figure5_fid_Mix-dataset.png', 'fid_curves_CelebAMask-HQ.png', 'fid_curves_Mix-dataset.png',
                 'lr_curves.png'):
        with PIL.Image.open(os.path.join(out, name)) as img:
            img.verify()
            assert img.format == 'PNG' and img.size[0] > 400 and img.size[1] > 300


def test_schedule_found_from_directory_and_unrecognised_runs(tmp_path):
    """Without a recorded schedule the grid layout (<dataset>/<preset>/) names it; other runs are listed, not dropped."""
    grid_run = tmp_path / 'Mix-dataset4' / 'exp2' / '00000-x'
    grid_run.mkdir(parents=True)
    (grid_run / 'training_options.json').write_text(json.dumps({'training_set_kwargs': {'path': 'd/Mix-dataset4.zip'}}))
    other = tmp_path / 'elsewhere' / '00000-y'
    other.mkdir(parents=True)
    (other / 'training_options.json').write_text(json.dumps({'training_set_kwargs': {'path': 'd/ffhq.zip'}}))
    cells, notes = report.collect_runs(str(tmp_path))
    assert list(cells) == [('Mix-dataset4', 'exp2')] and cells[('Mix-dataset4', 'exp2')][0]['found_by'] == 'directory'
    assert len(notes['unrecognised']) == 1 and 'ffhq' in notes['unrecognised'][0]


def test_rank_marks_rules():
    assert report.rank_marks([3.0, 1.0, 2.0]) == [None, None, None]            # too few values to mark
    assert report.rank_marks([5.0, 1.0, None, 2.0, 4.0, 3.0]) == ['worst', 'best', None, 'best', 'worst', None]
    assert report.rank_marks([1.0, 1.0, 1.0, 2.0, 3.0]) == ['best', 'best', 'best', 'worst', 'worst']  # ties share


def test_cli(paper_runs, tmp_path):
    from click.testing import CliRunner
    result = CliRunner().invoke(report.main, [paper_runs, '--out', str(tmp_path / 'o'), '--no-plots'])
    assert result.exit_code == 0, result.output
    assert '79 runs read, 78 finished' in result.output
    assert sorted(os.listdir(tmp_path / 'o')) == sorted(
        ['report.md', 'report.html', 'summary.json', 'points.csv', 'cells.csv', 'paired.csv',
         'table3_fid100_CelebAMask-HQ.csv', 'table4_fid100_Mix-dataset.csv',
         'table5_fidmin_CelebAMask-HQ.csv', 'table6_fidmin_Mix-dataset.csv'])

# ----------------------------------------------------------------------------
# Fewer generated images (train.py --metric-num-gen) and other evaluation points (--points), as the
# built-in demo produces: FID from 256 images at kimg 1 and 2.


def write_small_run(run_dir, dataset, preset, lines):
    """A run dir whose metric lines are (kimg, value, num_gen); num_gen None writes a standard fid50k_full line.

    Lines with a count carry the key the metrics code writes for it (fid256_full) and a `num_gen` field.
    """
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump({'training_set_kwargs': {'path': f'/d/{dataset}.zip'}, 'lr_schedule': preset}, f)
    with open(os.path.join(run_dir, 'metric-fid50k_full.jsonl'), 'w') as f:
        for kimg, value, num_gen in lines:
            record = {'results': {'fid50k_full' if num_gen is None else f'fid{num_gen}_full': value},
                      'metric': 'fid50k_full', 'snapshot_pkl': f'network-snapshot-{int(kimg):06d}.pkl',
                      'kimg': kimg, 'detector': {'name': 'inception', 'sha256': '0' * 64}}
            if num_gen is not None:
                record['num_gen'] = num_gen
            f.write(json.dumps(record) + '\n')


def table_cell(summary, prefix, label, dataset):
    """(value, status) of one cell of the summary table whose name starts with prefix."""
    (name,) = [n for n in summary['tables'] if n.startswith(prefix)]
    table = summary['tables'][name]
    row = next(r for r in table['rows'] if r['label'] == label)
    cell = row['cells'][table['columns'].index(dataset)]
    return cell['value'], cell['status']


def test_small_count_run_with_custom_points(tmp_path):
    """The demo's run: fid256_full at kimg 0, 1.008, 2.016 reads as a finished run with --points 1,2."""
    runs = tmp_path / 'runs'
    write_small_run(str(runs / 'Mix-dataset1' / 'ddclr' / '00000-x'), 'Mix-dataset1', 'ddclr',
                    [(0.0, 250.0, 256), (1.008, 310.5, 256), (2.016, 301.25, 256)])
    from click.testing import CliRunner
    out = tmp_path / 'o'
    result = CliRunner().invoke(report.main, [str(runs), '--out', str(out), '--no-plots', '--points', '2,1'])
    assert result.exit_code == 0, result.output
    assert '1 runs read, 1 finished' in result.output and '256 generated images' in result.output
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['snap_kimg'] == [1, 2]
    assert summary['runs'][0]['points'] == {'0': 250.0, '1': 310.5, '2': 301.25}
    assert summary['runs'][0]['num_gen'] == 256
    # Table 4: the value at the last point (2 kimg); Table 6: the minimum over 1 and 2 kimg (kimg 0 excluded).
    assert table_cell(summary, 'table4_', 'DDCLR', 'Mix-dataset1') == (301.25, 'ok')
    assert table_cell(summary, 'table6_', 'DDCLR', 'Mix-dataset1') == (301.25, 'ok')
    assert table_cell(summary, 'table4_', 'Fixed', 'Mix-dataset1') == (None, 'missing')
    assert sorted(os.listdir(out)) == sorted(
        ['report.md', 'report.html', 'summary.json', 'points.csv', 'cells.csv', 'paired.csv',
         'table3_fid2_CelebAMask-HQ.csv', 'table4_fid2_Mix-dataset.csv',
         'table5_fidmin_CelebAMask-HQ.csv', 'table6_fidmin_Mix-dataset.csv'])
    md = (out / 'report.md').read_text()
    assert '1 finished (all of kimg 1, 2)' in md
    assert 'values are from 256 generated images per point, not 50,000' in md
    assert '### Table 4: FID at 2 kimg, Mix-dataset (fid50k_full, 256 generated images, lower is better)' in md
    assert '### Table 6: minimum FID over 1/2 kimg, Mix-dataset' in md
    with open(out / 'points.csv', newline='') as f:
        assert {r['num_gen'] for r in csv.DictReader(f)} == {'256'}

    # With the study's default points the same run has none of 40/60/80/100.
    default = report.write_report(str(runs), str(tmp_path / 'o2'), plots=False)
    assert default['finished'] == 0
    assert table_cell(default, 'table4_fid100', 'DDCLR', 'Mix-dataset1') == (None, 'partial 0/4')


def test_mixed_counts_within_a_run_are_never_mixed(tmp_path):
    """A run with 50k lines at 40 kimg only and 256-image lines at all four points is judged by the 256 lines."""
    runs = tmp_path / 'runs'
    quick = [(k, 100.0 + k, 256) for k in (40, 60, 80, 100)]
    write_small_run(str(runs / 'a'), 'CelebAMask-HQ1', 'clr', [(40, 20.0, None)] + quick)
    # Both counts complete: the larger count wins, its values only.
    write_small_run(str(runs / 'b'), 'CelebAMask-HQ2', 'clr', [(k, 30.0 - k / 100, None) for k in (40, 60, 80, 100)] + quick)
    summary = report.write_report(str(runs), str(tmp_path / 'o'), plots=False)
    runs_by = {r['dataset']: r for r in summary['runs']}
    assert runs_by['CelebAMask-HQ1']['num_gen'] == 256
    assert runs_by['CelebAMask-HQ1']['points'] == {str(k): 100.0 + k for k in (40, 60, 80, 100)}
    assert runs_by['CelebAMask-HQ2']['num_gen'] == 50000
    assert table_cell(summary, 'table5_', 'CLR', 'CelebAMask-HQ1') == (140.0, 'ok')
    assert table_cell(summary, 'table5_', 'CLR', 'CelebAMask-HQ2') == (pytest.approx(29.0), 'ok')
    assert len(summary['num_gen']['mixed_within_runs']) == 2
    assert summary['num_gen']['runs_per_count'] == {'256': 1, '50000': 1}
    md = open(os.path.join(tmp_path, 'o', 'report.md'), encoding='utf-8').read()
    assert 'Runs differ in generated-image count**: 50,000 images (1 run), 256 images (1 run)' in md
    assert 'used only the 256-image lines' in md and 'used only the 50,000-image lines' in md
    assert 'mixed generated-image counts' in md  # in the table headings


def test_points_option_rejects_bad_values(tmp_path):
    from click.testing import CliRunner
    assert report.parse_points('100,40, 60,40') == (40, 60, 100)
    for bad in ('', 'a,b', '-1,2', '1.5'):
        result = CliRunner().invoke(report.main, [str(tmp_path), '--out', str(tmp_path / 'o'), '--points', bad])
        assert result.exit_code == 2 and '--points' in result.output, (bad, result.output)
