"""Command line: look at learning-rate schedules before training with them.

    python -m schedulers list
    python -m schedulers show ddclr --kimg 100 --at 0 4.1667 50 100
    python -m schedulers plot ddclr dclr1 exp1 --kimg 100 --out curves.png [--points 1000]
"""

import argparse
import sys

from dnnlib.util import os_error_line

from . import KINDS, PAPER_LABELS, PRESETS, describe, lr_at, parse_lr_schedule, usage


def _parse_all(parser, specs):
    out = []
    for spec in specs:
        try:
            out.append(parse_lr_schedule(spec))
        except ValueError as e:
            parser.error(str(e))
    return out


def _cmd_list(args, parser):
    del args, parser
    print('presets (rows of the study\'s Table 1):')
    for name, spec in PRESETS.items():
        print(f'  {name:7s} {PAPER_LABELS[name]:9s} {spec}')
    print('schedules (NAME:key=value,...; keys after a preset override it):')
    for kind, (_, title, formula) in KINDS.items():
        print(f'  {usage(kind):40s} {title}: {formula}')
    return 0


def _cmd_show(args, parser):
    if args.kimg <= 0:
        parser.error(f'--kimg must be > 0, got {args.kimg:g}')
    for sched in _parse_all(parser, args.spec):
        print(describe(sched))
        for kimg in args.at if args.at else [args.kimg * i / 4 for i in range(5)]:
            value = lr_at(sched, kimg * 1000, args.kimg * 1000)
            print(f'  kimg {kimg:10.4f}  lr ' + ('(optimizer lr)' if value is None else f'{value:.6g}'))
    return 0


def _cmd_plot(args, parser):
    from . import plot  # numpy only; matplotlib is imported inside plot_schedules
    if args.kimg <= 0:
        parser.error(f'--kimg must be > 0, got {args.kimg:g}')
    if args.points < 2:
        parser.error(f'--points must be >= 2, got {args.points}')
    schedules = _parse_all(parser, args.spec)
    try:
        plot.plot_schedules(schedules, args.kimg, args.out, points=args.points, title=args.title)
    except OSError as e:  # unwritable --out, full disk: one line, no usage text, no partial file
        # Named by the --out path itself, whichever file (a temporary one) the OS error names.
        print(f'{parser.prog}: error: {os_error_line(OSError(e.errno, e.strerror, args.out), "--out")}',
              file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    print(f'wrote {args.out} ({len(schedules)} curve(s) over {args.kimg:g} kimg)')
    return 0


def build_parser():
    """The argparse parser (kept separate so tests can drive it)."""
    parser = argparse.ArgumentParser(prog='python -m schedulers', description='Inspect learning-rate schedules.')
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('list', help='list presets and schedule kinds')
    p.set_defaults(func=_cmd_list, parser=p)

    p = sub.add_parser('show', help='print lr values of schedules at chosen points')
    p.add_argument('spec', nargs='+', help='schedule spec(s), e.g. ddclr or exp:first=0.003,final=0.0005')
    p.add_argument('--kimg', type=float, default=100, help='run length in kimg (default 100)')
    p.add_argument('--at', type=float, nargs='+', help='kimg values to print (default 0, 1/4, ..., end)')
    p.set_defaults(func=_cmd_show, parser=p)

    p = sub.add_parser('plot', help='draw lr against kimg into an image file')
    p.add_argument('spec', nargs='+', help='schedule spec(s), e.g. ddclr dclr1 exp1')
    p.add_argument('--kimg', type=float, default=100, help='run length in kimg (default 100)')
    p.add_argument('--out', required=True, help='output image (.png, .pdf, .svg)')
    p.add_argument('--points', type=int, default=1000, help='samples per curve (default 1000)')
    p.add_argument('--title', default=None, help='figure title')
    p.set_defaults(func=_cmd_plot, parser=p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args, args.parser)


if __name__ == '__main__':
    sys.exit(main())
