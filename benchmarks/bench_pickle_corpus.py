"""Time and memory of refusing every crafted pickle of tests/pickle_corpus.py.

Each case is loaded from a file with patches.network_pickle.load_network_pkl and must be refused. Prints
the time of each case, the slowest one against the time of loading the same tiny valid snapshot
(the baseline, measured in the same run), and the growth of the process's peak RSS over the whole
corpus, an upper bound on what any single case allocated. The targets are < 2 s and < 500 MB per case.

Example:
    python benchmarks/bench_pickle_corpus.py
"""

import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]

import pickle_corpus  # noqa: E402
from patches import network_pickle  # noqa: E402


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _load_seconds(path):
    start = time.perf_counter()
    try:
        network_pickle.load_network_pkl(path)
    except network_pickle.NetworkPickleError:
        return time.perf_counter() - start, True
    return time.perf_counter() - start, False


def main():
    with tempfile.TemporaryDirectory() as tmp:
        cases = pickle_corpus.build_corpus(tmp)
        valid = os.path.join(tmp, 'valid.pkl')
        with open(valid, 'wb') as f:
            f.write(pickle_corpus.snapshot_bytes())
        baseline = min(_load_seconds(valid)[0] for _ in range(3))
        path = os.path.join(tmp, 'case.pkl')
        start_peak = _peak_mib()
        times, loaded = {}, []
        for case in cases:
            with open(path, 'wb') as f:
                f.write(case.data)
            times[case.name], refused = _load_seconds(path)
            if not refused:
                loaded.append(case.name)
        growth = _peak_mib() - start_peak
    for name, seconds in times.items():
        print(f'  {name:28s} {seconds * 1000:8.1f} ms')
    slowest = max(times, key=times.get)
    print(f'cases              : {len(cases)} ({len(cases) - len(loaded)} refused)')
    print(f'total              : {sum(times.values()):.2f} s')
    print(f'slowest case       : {slowest} {times[slowest] * 1000:.1f} ms')
    print(f'valid tiny load    : {baseline * 1000:.1f} ms (baseline)')
    print(f'slowest / baseline : {times[slowest] / baseline:.2f}x')
    print(f'peak RSS growth    : {growth:.1f} MiB (bound for every case)')
    if loaded:
        print('NOT REFUSED: ' + ', '.join(loaded))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
