"""Build datasets for train.py and calc_metrics.py.

Upstream's command lines work unchanged (no subcommand):

    python dataset_tool.py --source=~/downloads/faces --dest=~/datasets/faces512.zip \\
        --transform=center-crop --width=512 --height=512

and two subcommands build and check the study's CelebAMask-HQ / mixed sets:

    python dataset_tool.py celebamask --celeba-dir=CelebAMask-HQ --generated-dir=sd-faces --dest=data
    python dataset_tool.py verify data/Mix-dataset1.manifest.json

The work is done in the dataset_build package; this file only maps flags.
"""

import signal
import sys

import click

from dnnlib import cli

from dataset_build import convert, images, study, verify as verify_mod
from dataset_build.errors import DatasetToolError, UsageError

_FILTERS = click.Choice(sorted(images.RESIZE_FILTERS))
_CONTEXT = dict(help_option_names=['-h', '--help'], max_content_width=100)
INTERRUPTED_EXIT = cli.EXIT_INTERRUPTED


class _Terminated(KeyboardInterrupt):
    """SIGTERM: cleaned up like Ctrl-C, but exits with cli.EXIT_PREEMPTED (run the command again)."""


def _first_interrupt(signum, _frame):
    # Further Ctrl-Cs (or SIGTERMs) are ignored, so they cannot break the cleanup of the first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt


class _UsageExit(click.ClickException):
    """A usage error: one 'Error:' line like any other, exit status 2 (cli.EXIT_USAGE)."""

    exit_code = cli.EXIT_USAGE


def _user_errors(func, *args, interrupted='Interrupted: stopped; temporary files removed, --dest unchanged', **kwargs):
    """Run func; a DatasetToolError becomes click's one-line 'Error: ...' with exit status 1 (2 for a
    UsageError), and
    Ctrl-C / SIGTERM one line with exit status 130 / 75 (the workers are stopped and temporary files
    removed on the way out)."""
    old = {s: signal.signal(s, _first_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = func(*args, **kwargs)
    except UsageError as e:
        raise _UsageExit(str(e)) from None
    except DatasetToolError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt as e:
        click.echo(interrupted, err=True)  # signals stay ignored: another Ctrl-C cannot add a traceback
        raise click.exceptions.Exit(cli.EXIT_PREEMPTED if isinstance(e, _Terminated) else INTERRUPTED_EXIT) from None
    finally:
        if signal.getsignal(signal.SIGINT) is _first_interrupt:
            for s, handler in old.items():
                signal.signal(s, handler)
    return result


# ----------------------------------------------------------------------------


@click.group(cls=cli.Group, invoke_without_command=True, context_settings=_CONTEXT)
@click.pass_context
@click.option('--source', metavar='PATH', help='Input: image folder (recursive), image .zip, '
              'cifar-10-python.tar.gz or train-images-idx3-ubyte.gz  [required without a subcommand]')
@click.option('--dest', metavar='PATH', help='Output .zip, or folder  [required without a subcommand]')
@click.option('--max-images', type=int, metavar='INT', help='Read at most this many input images')
@click.option('--transform', type=click.Choice(list(convert.TRANSFORMS)), help='Crop mode (needs --width, --height)')
@click.option('--width', type=int, metavar='INT', help='Output width')
@click.option('--height', type=int, metavar='INT', help='Output height')
@click.option('--resolution', type=int, metavar='INT', help='Shorthand for --width=INT --height=INT')
@click.option('--resize-filter', type=_FILTERS, default=images.DEFAULT_RESIZE_FILTER, show_default=True,
              help='Resampling filter for every resize (box matches the paper\'s FFHQ-256)')
@click.option('--overwrite', is_flag=True, help='Replace an existing --dest')
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True,
              help='Worker processes (0 = all cores)')
def main(ctx, source, dest, max_images, transform, width, height, resolution, resize_filter, overwrite, workers):
    """Convert images into a StyleGAN2-ADA dataset (.zip or folder of PNGs + dataset.json).

    \b
    Without a subcommand this is upstream's converter, e.g.
      python dataset_tool.py --source=faces/ --dest=faces512.zip \\
          --transform=center-crop --width=512 --height=512
    Odd images (CMYK, RGBA, palette, 16-bit) are converted, unreadable or mis-sized ones skipped;
    neither stops the run: both are listed at the end and in conversion-report.json inside the output.
    Ctrl-C stops at once and leaves --dest as it was.
    """
    given = [f for f, v in (('--source', source), ('--dest', dest), ('--max-images', max_images),
                            ('--transform', transform), ('--width', width), ('--height', height),
                            ('--resolution', resolution)) if v is not None]
    if ctx.invoked_subcommand is not None:
        if given:
            raise click.UsageError(f'{", ".join(given)} belong to the plain conversion, not to '
                                   f'"{ctx.invoked_subcommand}" (put subcommand options after its name)')
        return
    if source is None:
        raise click.UsageError("Missing option '--source'.")
    if dest is None:
        raise click.UsageError("Missing option '--dest'.")
    if resolution is not None:
        if (width is not None and width != resolution) or (height is not None and height != resolution):
            raise click.UsageError('--resolution conflicts with --width/--height')
        width = height = resolution
    _user_errors(convert.convert_dataset, source=source, dest=dest, max_images=max_images, transform=transform,
                 width=width, height=height, resize_filter=resize_filter, overwrite=overwrite, workers=workers,
                 log=click.echo, progress=sys.stderr.isatty())


# ----------------------------------------------------------------------------


@main.command(context_settings=_CONTEXT)
@click.option('--celeba-dir', required=True, metavar='DIR', help='CelebAMask-HQ root, or its CelebA-HQ-img folder')
@click.option('--generated-dir', metavar='DIR', help='Folder of generated face images (recursive)')
@click.option('--dest', required=True, metavar='DIR', help='Output folder for the zips, manifests and CSV')
@click.option('--num-subsets', type=int, default=5, show_default=True, help='K: number of disjoint real subsets')
@click.option('--subset-size', type=int, default=1000, show_default=True, help='N: images per subset')
@click.option('--num-generated', type=int, default=200, show_default=True,
              help='M: images of each subset replaced by generated ones in Mix-datasetk (0 = no mixes)')
@click.option('--resolution', type=int, default=512, show_default=True, help='Output side (power of two)')
@click.option('--seed', type=int, default=0, show_default=True, help='Selection seed')
@click.option('--resize-filter', type=_FILTERS, default=images.DEFAULT_RESIZE_FILTER, show_default=True,
              help='Resampling filter (recorded in the manifests)')
@click.option('--skip-bad', is_flag=True, help='Leave unusable source files out (listed in the manifests) '
              'instead of stopping')
@click.option('--overwrite', is_flag=True, help='Replace existing outputs of the same names')
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True,
              help='Worker processes (0 = all cores)')
def celebamask(celeba_dir, generated_dir, dest, num_subsets, subset_size, num_generated, resolution, seed,
               resize_filter, skip_bad, overwrite, workers):
    """Build CelebAMask-HQ1..K.zip and Mix-dataset1..K.zip with manifests.

    \b
    CelebAMask-HQk: N real images, the K subsets disjoint, chosen by --seed.
    Mix-datasetk:   CelebAMask-HQk with M of its images (chosen by --seed) replaced by
                    distinct generated images (none used twice).
    First every image of both folders is decoded; any unusable file (unreadable, truncated,
    not square, smaller than --resolution, a byte-identical copy) stops the run with the
    full list and nothing written, unless --skip-bad. The sets are built in a temporary
    folder and moved into --dest when complete. Each <set>.manifest.json lists every
    image's source and sha256; check it with `verify`. The same inputs and seed give
    byte-identical zips; a file skipped or deleted leaves the other sets unchanged.
    """
    _user_errors(study.build_study_sets, celeba_dir=celeba_dir, generated_dir=generated_dir, dest=dest,
                 num_subsets=num_subsets, subset_size=subset_size, num_generated=num_generated,
                 resolution=resolution, seed=seed, resize_filter=resize_filter, skip_bad=skip_bad,
                 overwrite=overwrite, workers=workers, log=click.echo, progress=sys.stderr.isatty())


@main.command(context_settings=_CONTEXT)
@click.argument('manifests', nargs=-1, required=True, metavar='MANIFEST_OR_ZIP...')
@click.option('--celeba-dir', metavar='DIR', help='Where the real images are now (default: as recorded)')
@click.option('--generated-dir', metavar='DIR', help='Where the generated images are now (default: as recorded)')
@click.option('--sources-only', is_flag=True, help='Check the source files only, not the zips')
def verify(manifests, celeba_dir, generated_dir, sources_only):
    """Re-hash the sources (and zips) of study sets against their manifests.

    Prints one line per changed or missing source and one line per damaged, truncated or
    changed zip (which entries), then OK or the problem count per set; exits 1 on any problem.
    """
    failed = 0
    for path in manifests:
        problems = _user_errors(verify_mod.verify_manifest, path, celeba_dir=celeba_dir,
                                generated_dir=generated_dir, check_zip=not sources_only,
                                progress=sys.stderr.isatty(), interrupted='Interrupted: verification stopped')
        for p in problems:
            click.echo(f'  {p}')
        click.echo(f'{path}: {"OK" if not problems else f"{len(problems)} problem(s)"}')
        failed += bool(problems)
    if failed:
        raise click.ClickException(f'{failed} of {len(manifests)} set(s) failed verification')


# ----------------------------------------------------------------------------

if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
