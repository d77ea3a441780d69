"""Check every compiled kernel variant against its reference op on this machine's GPU and print a table.

    python -m torch_utils.ops.selftest [--json PATH] [--dtypes float16,float32]

Each row: op, variant, dtype, max error (max |kernel - ref| / (1 + |ref|) over the output and its
gradients, against a float64 reference), the dtype's tolerance, the kernel's and the reference's
forward time in ms on a small input, and ok/MISMATCH. Every variant is run afresh (the cache that
impl='auto' keeps is refreshed with these results). Exits 0 after printing the table; without a CUDA
device it says so in one line and exits 0; a plugin that does not build is one 'Error:' line, exit 1.
"""

import argparse
import json
import sys

import torch

from dnnlib import util
from torch_utils import custom_ops, kernel_checks
from torch_utils.ops import bias_act, upfirdn2d

DTYPES = {'float16': torch.float16, 'float32': torch.float32, 'float64': torch.float64}


def variants():
    """(op, variant) pairs of every compiled specialisation, in table order."""
    return ([('upfirdn2d', v) for v in upfirdn2d.KERNEL_VARIANTS] +
            [('bias_act', act) for act in bias_act.activation_funcs])


def run(device, dtypes):
    """One result dict per (op, variant, dtype), each checked now."""
    rows = []
    for op, variant in variants():
        for name in dtypes:
            result = kernel_checks.check(op, variant, DTYPES[name], device, use_cache=False)
            rows.append(dict(op=op, variant=variant, dtype=name, **{k: result[k] for k in
                             ('ok', 'max_error', 'tolerance', 'kernel_ms', 'ref_ms')}))
    return rows


def format_table(rows):
    lines = [f'{"op":10s} {"variant":20s} {"dtype":8s} {"max error":>10s} {"tolerance":>9s} {"kernel ms":>9s} '
             f'{"ref ms":>8s} {"ref/kernel":>10s}  status']
    for r in rows:
        ratio = r['ref_ms'] / r['kernel_ms'] if r['kernel_ms'] > 0 else float('nan')
        lines.append(f'{r["op"]:10s} {r["variant"]:20s} {r["dtype"]:8s} {r["max_error"]:10.2e} {r["tolerance"]:9.0e} '
                     f'{r["kernel_ms"]:9.3f} {r["ref_ms"]:8.3f} {ratio:9.2f}x  {"ok" if r["ok"] else "MISMATCH"}')
    bad = sum(not r['ok'] for r in rows)
    lines.append(f'selftest: {len(rows) - bad} of {len(rows)} variants match the reference'
                 + (f'; {bad} MISMATCH (impl="auto" takes the reference for those)' if bad else ''))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', metavar='PATH', help='also write the rows as JSON to PATH')
    parser.add_argument('--dtypes', default='float16,float32', help='dtypes to check [float16,float32]')
    a = parser.parse_args(argv)
    dtypes = [d.strip() for d in a.dtypes.split(',') if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        print(f'Error: --dtypes: unknown dtype {unknown[0] if unknown else "(none)"}; '
              f'choose from {", ".join(DTYPES)}', file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print('selftest: no CUDA device: nothing to check (the ops run their PyTorch reference here)')
        if a.json:
            util.atomic_write_text(a.json, json.dumps(dict(device=None, rows=[]), indent=1) + '\n')
        return 0
    device = torch.device('cuda')
    try:
        for module in (upfirdn2d, bias_act):
            module._load_plugin(required=True)
    except custom_ops.PluginBuildError as err:
        print(f'Error: {err}', file=sys.stderr)
        return 1
    rows = run(device, dtypes)
    print(f'selftest on {kernel_checks.device_key(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})')
    print(format_table(rows))
    if a.json:
        util.atomic_write_text(a.json, json.dumps(dict(device=kernel_checks.device_key(device), rows=rows),
                                                  indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
