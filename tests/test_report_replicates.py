"""The report with replicate seeds: mean ± sd, paired tests against scipy, rankings, figures, HTML, the paper.

The hand-made grid: all 40 Mix-dataset cells with two seeds (seed 1 found once from training_options.json's
random_seed, once from a '<preset>-seed1' directory), where every value is chosen so that the paired
differences and ranks are known by hand.
"""

import base64
import io
import json
import os
import re

import PIL.Image
import pytest
import scipy.stats
from click.testing import CliRunner

from scripts import paper_compare, report, report_stats, study_grid as sg

MIX = sg.GROUPS['Mix-dataset']
# Fixed - DDCLR over (dataset 1..5) x (seed 0, 1): distinct magnitudes, two negative.
FIXED_DIFFS = [1.5, 2.0, -0.5, 3.0, 1.0, 2.5, 0.25, 4.0, -0.75, 3.5]
# CLR - DDCLR: one zero difference (dropped by the Wilcoxon test, counted as a tie).
CLR_DIFFS = [0.0, 1.0, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def ddclr_value(d, seed):
    return 20.0 + d + 0.5 * seed


def value(preset, d, seed):
    """FID at the last point of (preset, dataset index d, seed)."""
    i = 2 * d + seed
    if preset == 'ddclr':
        return ddclr_value(d, seed)
    if preset == 'fixed':
        return ddclr_value(d, seed) + FIXED_DIFFS[i]
    if preset == 'clr':
        return ddclr_value(d, seed) + CLR_DIFFS[i]
    return ddclr_value(d, seed) + 0.1 * (sg.PRESET_NAMES.index(preset) + 1)


def write_run(run_dir, dataset, preset, points, seed=None, interval=None):
    os.makedirs(run_dir, exist_ok=True)
    options = {'training_set_kwargs': {'path': f'/d/{dataset}.zip'}, 'lr_schedule': preset}
    if seed is not None:
        options['random_seed'] = seed
    with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
        json.dump(options, f)
    with open(os.path.join(run_dir, 'metric-fid50k_full.jsonl'), 'w') as f:
        for kimg, v in sorted(points.items()):
            record = {'results': {'fid50k_full': v}, 'metric': 'fid50k_full', 'kimg': kimg}
            if interval:
                record['uncertainty'] = {'fid50k_full': {'se': interval / 1.96, 'ci95': [v - interval, v + interval]}}
            f.write(json.dumps(record) + '\n')


@pytest.fixture(scope='module')
def replicate_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    for d, dataset in enumerate(MIX):
        for preset in sg.PRESET_NAMES:
            for seed in (0, 1):
                v = value(preset, d, seed)
                points = {40: v + 3, 60: v + 2, 80: v + 1, 100: v}
                leaf = preset + ('-seed1' if seed else '')
                recorded = seed if (d + seed) % 2 else None   # seed 1: recorded or from the directory name
                write_run(str(root / dataset / leaf / '00000-x'), dataset, preset, points, seed=recorded)
    return str(root)


@pytest.fixture(scope='module')
def written(replicate_runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('report'))
    return out, report.write_report(replicate_runs, out, compare_paper=True)


def paired_row(summary, preset, table='table4_fid100_Mix-dataset'):
    return next(r for r in summary['paired'][table] if r['preset'] == preset)


def test_cells_are_mean_and_sd_over_seeds(written):
    out, summary = written
    rows = {r['preset']: r['cells'] for r in summary['tables']['table4_fid100_Mix-dataset']['rows']}
    cell = rows['ddclr'][0]
    assert cell['value'] == pytest.approx(20.25) and cell['sd'] == pytest.approx(0.5 / 2 ** 0.5)
    assert cell['n'] == 2 and cell['per_seed'] == {'0': 20.0, '1': 20.5}
    fixed = rows['fixed'][0]
    assert fixed['value'] == pytest.approx((21.5 + 22.5) / 2)
    # Mean column: the sd over seeds of the per-seed means over the 5 datasets.
    mean0 = sum(value('fixed', d, 0) for d in range(5)) / 5
    mean1 = sum(value('fixed', d, 1) for d in range(5)) / 5
    assert rows['fixed'][5]['value'] == pytest.approx((mean0 + mean1) / 2)
    assert rows['fixed'][5]['sd'] == pytest.approx(abs(mean0 - mean1) / 2 ** 0.5)
    md = open(os.path.join(out, 'report.md'), encoding='utf-8').read()
    assert '| DDCLR | **20.250** ± 0.354 |' in md
    assert len(summary['runs']) == 80 and {r['seed'] for r in summary['runs']} == {0, 1}
    assert 'over 2 seeds (0, 1), 80 runs' in md


def test_paired_statistics_equal_scipy_and_hand_counts(written):
    out, summary = written
    fixed = paired_row(summary, 'fixed')
    assert fixed['pairs'] == 10 and (fixed['better'], fixed['worse'], fixed['ties']) == (2, 8, 0)
    assert fixed['mean_diff'] == pytest.approx(sum(FIXED_DIFFS) / 10)
    want = scipy.stats.wilcoxon(FIXED_DIFFS)
    assert fixed['wilcoxon_w'] == want.statistic == 5.0            # ranks of -0.5 and -0.75: 2 + 3
    assert fixed['wilcoxon_p'] == pytest.approx(want.pvalue, rel=1e-12)
    assert fixed['wilcoxon_p'] == pytest.approx(20 / 1024)         # exact: 10 of 1024 sign patterns have W <= 5
    assert fixed['sign_p'] == pytest.approx(scipy.stats.binomtest(2, 10).pvalue) == pytest.approx(112 / 1024)
    clr = paired_row(summary, 'clr')
    assert (clr['pairs'], clr['better'], clr['worse'], clr['ties']) == (10, 1, 8, 1)
    want = scipy.stats.wilcoxon(CLR_DIFFS)
    assert (clr['wilcoxon_w'], clr['wilcoxon_p']) == (pytest.approx(want.statistic), pytest.approx(want.pvalue))
    assert clr['sign_p'] == pytest.approx(scipy.stats.binomtest(1, 9).pvalue)
    assert 'ddclr' not in {r['preset'] for r in summary['paired']['table4_fid100_Mix-dataset']}
    md = open(os.path.join(out, 'report.md'), encoding='utf-8').read()
    assert '| Fixed | 10 | +1.650 | +1.750 | 2 / 8 / 0 | 5 | 0.020 | 0.109 |' in md
    with open(os.path.join(out, 'paired.csv')) as f:
        assert sum(1 for line in f if line.startswith('table4_fid100_Mix-dataset,fixed,')) == 1


def test_paired_differences_need_the_same_seed():
    cell = lambda per_seed: dict(value=1.0, per_seed=per_seed)  # noqa: E731
    table = dict(columns=['a', 'b', 'mean'], rows=[
        dict(preset='ddclr', cells=[cell({0: 1.0, 1: 2.0}), cell({0: 5.0}), cell({})]),
        dict(preset='fixed', cells=[cell({1: 4.0, 2: 9.0}), cell({0: 4.0}), cell({})])])
    assert report_stats.paired_differences(table, 'fixed') == [('a', 1, 2.0), ('b', 0, -1.0)]
    assert report_stats.wilcoxon([0.0, 0.0]) == (None, None) and report_stats.sign_test(0, 0) is None


def test_ranking_per_dataset_and_mean_rank(written):
    _, summary = written
    ranks = summary['ranks']['table4_fid100_Mix-dataset']
    assert ranks['columns'] == list(MIX) and ranks['skipped'] == []
    by = {r['preset']: r for r in ranks['rows']}
    for d in range(5):
        means = [(value(p, d, 0) + value(p, d, 1)) / 2 for p in sg.PRESET_NAMES]
        want = scipy.stats.rankdata(means)
        assert [by[p]['ranks'][d] for p in sg.PRESET_NAMES] == list(want)
    # Dataset 2: CLR's mean difference is -0.5, so CLR ranks first and DDCLR second; elsewhere DDCLR first.
    assert by['ddclr']['ranks'] == [1.0, 2.0, 1.0, 1.0, 1.0] and by['ddclr']['mean_rank'] == pytest.approx(1.2)
    assert report_stats.average_ranks([3.0, 1.0, 3.0, 2.0]) == list(scipy.stats.rankdata([3.0, 1.0, 3.0, 2.0]))


def test_paper_comparison(written, replicate_runs):
    _, summary = written
    rows = {r['preset']: r for r in summary['paper_comparison']['table4_fid100_Mix-dataset']}
    assert rows['ddclr']['cells'][0]['paper'] == 22.482 and rows['ddclr']['cells'][5]['paper'] == 21.939
    assert rows['ddclr']['cells'][0]['diff'] == pytest.approx(20.25 - 22.482)
    cel = {r['preset']: r for r in summary['paper_comparison']['table3_fid100_CelebAMask-HQ']}
    assert cel['fixed']['cells'][0] == dict(ours=None, paper=20.42, diff=None)
    result = CliRunner().invoke(report.main, [replicate_runs, '--out', summary['runs_dir'] + '-o', '--no-plots',
                                              '--compare-paper'])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith('DDCLR') and '21.939' in l)
    assert '20.250 / 22.482 / -2.232' in line


def test_paper_tables_json_matches_the_transcription_in_test_report():
    """Two independent transcriptions of the paper's Tables 3-6 (values and marks) agree."""
    import test_report
    paper = paper_compare.load_paper_tables()
    for number in (3, 4, 5, 6):
        ours = {sg.PAPER_LABELS[p]: list(zip(r['values'], r['marks'])) for p, r in paper[number]['rows'].items()}
        assert ours == test_report.paper_table(number)
        assert paper[number]['group'] == test_report.GROUP_OF_TABLE[number]


def _pngs_in_html(text):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_html_page_is_self_contained(written):
    out, _ = written
    text = open(os.path.join(out, 'report.html'), encoding='utf-8').read()
    assert text.startswith('<!DOCTYPE html>') and text.rstrip().endswith('</html>')
    assert not re.search(r'(src|href)="(?!data:)', text)                # nothing loaded from elsewhere
    pngs = _pngs_in_html(text)
    assert len(pngs) == 3                                                # the 2 Mix FID figures and the lr curves
    for data in pngs:
        with PIL.Image.open(io.BytesIO(data)) as img:
            img.verify()
    assert '<td class="best">20.250 ± 0.354</td>' in text
    assert 'Not drawn (no data): fid_curves_CelebAMask-HQ.png' in text


def test_figures_without_data_are_not_written(written):
    out, summary = written
    assert not os.path.exists(os.path.join(out, 'fid_curves_CelebAMask-HQ.png'))
    assert os.path.exists(os.path.join(out, 'fid_curves_Mix-dataset.png'))
    md = open(os.path.join(out, 'report.md'), encoding='utf-8').read()
    assert 'Not drawn (no data for their schedules): fid_curves_CelebAMask-HQ.png.' in md
    assert '![fid_curves_CelebAMask-HQ.png]' not in md
    assert '### Table 3: FID at 100 kimg, CelebAMask-HQ (fid50k_full, lower is better)\n\nNo runs of this group yet' in md
    assert '- missing (no run dir): 80 of 160 runs: every run of CelebAMask-HQ1' in md


def test_figure_panels_legend_and_axis_labels(tmp_path):
    """One run drawn: its panel has labelled kimg ticks and the real sample count; empty panels say so."""
    matplotlib = pytest.importorskip('matplotlib')
    from scripts import report_figures
    records = [dict(seed=0, points={0: 250.0, 1: 310.5, 2: 301.25}, intervals={1: (300.0, 321.0)}, run_dir='r')]
    cells = {('Mix-dataset1', 'ddclr'): records}
    seen = {}
    real_save = report_figures.save_figure

    def spy(plt, fig, path):
        seen['fig'] = fig
        seen['texts'] = [t.get_text() for ax in fig.axes for t in ax.texts]
        seen['legend'] = [t.get_text() for t in fig.legends[0].get_texts()]
        ax = fig.axes[0]
        seen['xticks'] = [t.get_text() for t in ax.get_xticklabels()]
        seen['ylabel'] = ax.get_ylabel()
        seen['collections'] = len(ax.collections)
        return real_save(plt, fig, path)
    report_figures.save_figure = spy
    try:
        data = report_figures.plot_fid_curves(cells, 'Mix-dataset', report.FIGURE5_SCHEDULES, str(tmp_path / 'f.png'),
                                              'FID (256 generated images)', 'title')
    finally:
        report_figures.save_figure = real_save
    assert data is not None and (tmp_path / 'f.png').read_bytes() == data
    assert seen['legend'] == ['DDCLR']
    assert seen['xticks'] == ['0', '1', '2'] and seen['ylabel'] == 'FID (256 generated images)'
    assert seen['texts'].count('no runs with data') == 4 and any('mean needs all 5' in t for t in seen['texts'])
    assert seen['collections'] == 1                                      # the interval band
    assert report.axis_label('fid50k_full', {50000: 3}) == 'FID (50,000 generated images)'
    assert report_figures.plot_fid_curves({}, 'Mix-dataset', ['ddclr'], str(tmp_path / 'f.png'), 'y', 't') is None
    assert not (tmp_path / 'f.png').exists()                            # the stale figure is removed too


def test_demo_like_run_shows_the_interval_and_the_new_sections(tmp_path):
    """The demo's output (one run, 256 generated images at 1 and 2 kimg, with recorded intervals)."""
    runs = tmp_path / 'runs'
    run_dir = runs / 'Mix-dataset1' / 'ddclr' / '00000-x'
    write_run(str(run_dir), 'Mix-dataset1', 'ddclr', {0: 250.0, 1: 310.5, 2: 301.25}, interval=6.0)
    out = tmp_path / 'o'
    result = CliRunner().invoke(report.main, [str(runs), '--out', str(out), '--points', '1,2'])
    assert result.exit_code == 0, result.output
    md = (out / 'report.md').read_text()
    assert '| DDCLR | 301.250 [295.250, 307.250] |' in md
    assert md.count('No pairs yet') == 4 and md.count('nothing to rank') == 4
    assert md.count('missing (no run dir)') == 1 and len(md.splitlines()) < 120
    with open(out / 'points.csv') as f:
        header = f.readline().strip().split(',')
        assert {'seed', 'ci95_lo', 'ci95_hi'} <= set(header)
    assert sorted(p for p in os.listdir(out) if p.endswith('.png')) == \
        ['fid_curves_Mix-dataset.png', 'figure5_fid_Mix-dataset.png', 'lr_curves.png']


def test_two_reports_of_the_same_runs_are_identical(replicate_runs, tmp_path):
    for out in ('a', 'b'):
        report.write_report(replicate_runs, str(tmp_path / out), compare_paper=True)
    names = sorted(os.listdir(tmp_path / 'a'))
    assert names == sorted(os.listdir(tmp_path / 'b')) and 'report.html' in names
    for name in names:
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name


def test_html_turns_the_report_markup_into_tags():
    from scripts import report_html
    text = report_html.markdown_html('**bold** and <u>low</u> & `code`\n| a | b |\n|---|---:|\n| **1** | 2 |')
    assert '<p><b>bold</b> and <u>low</u> &amp; <code>code</code></p>' in text
    assert '<table><tr><th>a</th><th>b</th></tr><tr><td><b>1</b></td><td>2</td></tr></table>' in text
    assert '**' not in text and '<script' not in report_html.markdown_html('<script>x</script>')
