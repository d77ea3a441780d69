"""Statistics of the study report: replicate means, paired comparisons with DDCLR, and rankings.

Everything here works on the table structures of scripts.report.build_table, whose cells carry the
per-seed values (`per_seed`: seed -> value) next to their mean and standard deviation.
"""

import math
import statistics
import warnings

REFERENCE = 'ddclr'   # the paper's proposal: every other schedule is compared with it


def mean_sd(values):
    """(mean, sample sd with n - 1, or None for fewer than 2 values) of a non-empty list."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) if len(values) >= 2 else None)


def group_point(cells, datasets, preset, kimg):
    """(mean, sd, n) over every run (dataset, seed) of a schedule on `datasets` with a value at kimg."""
    values = [r['points'][kimg] for d in datasets for r in cells.get((d, preset)) or [] if kimg in r['points']]
    return (*mean_sd(values), len(values)) if values else (None, None, 0)


def paired_differences(table, preset, reference=REFERENCE):
    """Differences preset - reference over the table's datasets and seeds where both have a value.

    Pairs are (dataset, seed): replicate k of one schedule is paired with replicate k of the other,
    which trained from the same seed. The mean column is not a pair.

    Returns:
        list of (dataset, seed, difference), in column then seed order.
    """
    rows = {row['preset']: row for row in table['rows']}
    pairs = []
    for col, dataset in enumerate(table['columns'][:-1]):
        mine, ref = rows[preset]['cells'][col]['per_seed'], rows[reference]['cells'][col]['per_seed']
        for seed in sorted(set(mine) & set(ref)):
            pairs.append((dataset, seed, mine[seed] - ref[seed]))
    return pairs


def wilcoxon(diffs):
    """(statistic, two-sided p) of scipy's Wilcoxon signed-rank test on the differences, or (None, None).

    scipy's defaults: zero differences dropped ('wilcox'), exact p for small samples without ties.
    None when no non-zero difference is left (the test is undefined).
    """
    if not any(d != 0 for d in diffs):
        return None, None
    import scipy.stats
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # scipy warns about small samples; the pair count is printed beside p
        res = scipy.stats.wilcoxon(diffs)
    return float(res.statistic), float(res.pvalue)


def sign_test(better, worse):
    """Two-sided exact binomial p of better vs worse counts (ties left out), or None without any."""
    if better + worse == 0:
        return None
    import scipy.stats
    return float(scipy.stats.binomtest(better, better + worse, 0.5).pvalue)


def paired_summary(table, reference=REFERENCE):
    """One record per schedule other than the reference: its paired comparison over the table.

    Returns:
        list of dict(preset, label, pairs, mean_diff, median_diff, better, worse, ties, wilcoxon_w,
        wilcoxon_p, sign_p); differences are schedule - reference, so negative = lower FID than it.
    """
    out = []
    for row in table['rows']:
        if row['preset'] == reference:
            continue
        diffs = [d for _, _, d in paired_differences(table, row['preset'], reference)]
        better, worse = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
        w, p = wilcoxon(diffs)
        out.append(dict(preset=row['preset'], label=row['label'], pairs=len(diffs),
                        mean_diff=sum(diffs) / len(diffs) if diffs else None,
                        median_diff=statistics.median(diffs) if diffs else None,
                        better=better, worse=worse, ties=len(diffs) - better - worse,
                        wilcoxon_w=w, wilcoxon_p=p, sign_p=sign_test(better, worse)))
    return out


def average_ranks(values):
    """Ranks 1..n of values (1 = lowest), ties getting the mean of their ranks (as scipy's rankdata)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def ranking(table):
    """Rank of every schedule in each dataset column where all schedules have a value, and the mean rank.

    Returns:
        dict(columns=[datasets ranked], skipped=[datasets with a missing value], rows=[dict(preset, label,
        ranks=[rank or None per dataset column], mean_rank or None)]).
    """
    datasets = table['columns'][:-1]
    ranked, skipped, per_col = [], [], {}
    for col, dataset in enumerate(datasets):
        values = [row['cells'][col]['value'] for row in table['rows']]
        if any(v is None for v in values):
            skipped.append(dataset)
            continue
        ranked.append(dataset)
        per_col[col] = average_ranks(values)
    rows = []
    for i, row in enumerate(table['rows']):
        ranks = [per_col[col][i] if col in per_col else None for col in range(len(datasets))]
        present = [r for r in ranks if r is not None]
        rows.append(dict(preset=row['preset'], label=row['label'], ranks=ranks,
                         mean_rank=sum(present) / len(present) if present else None))
    return dict(columns=ranked, skipped=skipped, rows=rows)


def format_p(p):
    """'0.031', '<0.001' or 'n/a'."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return 'n/a'
    return '<0.001' if p < 0.001 else f'{p:.3f}'
