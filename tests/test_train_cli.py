"""train.py options: cfg table, auto derivation, run naming, validation messages, dry run, --help."""

import json
import os

import pytest
from click.testing import CliRunner

import dnnlib
from training import options as opt_lib
from training_helpers import write_image_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _info(res=32, n=16, labels=False, name='data'):
    return dnnlib.EasyDict(name=name, num_images=n, resolution=res, num_channels=3, has_labels=labels,
                           label_dim=4 if labels else 0)


def _build(info=None, resume_info=None, **opts):
    opts.setdefault('data', '/x/data.zip')
    return opt_lib.build_training_options(opts, dataset_info=info or _info(), resume_info=resume_info)


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    return write_image_zip(str(tmp_path_factory.mktemp('data') / 'tiny.zip'))


def _invoke(args):
    import train
    return CliRunner().invoke(train.main, args, prog_name='train.py')


# ----------------------------------------------------------------------------
# Translation (no files).


@pytest.mark.parametrize('res,gpus,mb,batch_gpu,channel_base,lr,gamma,ema', [
    (32, 1, 32, 32, 16384, 0.0025, 0.0064, 10),
    (256, 2, 32, 16, 16384, 0.0025, 0.4096, 10),
    (512, 4, 32, 8, 32768, 0.0025, 1.6384, 10),
    (1024, 8, 32, 4, 32768, 0.002, 6.5536, 10),
])
def test_auto_derivation(res, gpus, mb, batch_gpu, channel_base, lr, gamma, ema):
    desc, a = _build(_info(res=res), gpus=gpus)
    assert desc == f'data-auto{gpus}'
    assert (a.batch_size, a.batch_gpu) == (mb, batch_gpu)
    assert a.G_kwargs.synthesis_kwargs.channel_base == a.D_kwargs.channel_base == channel_base
    assert a.G_opt_kwargs.lr == a.D_opt_kwargs.lr == lr
    assert a.loss_kwargs.r1_gamma == pytest.approx(gamma)
    assert a.ema_kimg == pytest.approx(ema)
    assert a.G_kwargs.mapping_kwargs.num_layers == 2 and a.ema_rampup == 0.05
    assert a.D_kwargs.epilogue_kwargs.mbstd_group_size == 4


@pytest.mark.parametrize('cfg,batch_gpu,mbstd,gamma,lr,map_', [
    ('stylegan2', 4, 4, 10, 0.002, 8),
    ('paper256', 8, 8, 1, 0.0025, 8),
    ('paper512', 8, 8, 0.5, 0.0025, 8),
    ('paper1024', 4, 4, 2, 0.002, 8),
    ('cifar', 32, 32, 0.01, 0.0025, 2),
])
def test_cfg_table_uses_ref_gpus_for_batch_gpu(cfg, batch_gpu, mbstd, gamma, lr, map_):
    _, a = _build(cfg=cfg)
    assert a.batch_gpu == batch_gpu  # mb // ref_gpus, not mb // gpus (fact sheet §12.1)
    assert a.D_kwargs.epilogue_kwargs.mbstd_group_size == mbstd
    assert (a.loss_kwargs.r1_gamma, a.G_opt_kwargs.lr, a.G_kwargs.mapping_kwargs.num_layers) == (gamma, lr, map_)
    assert a.G_opt_kwargs.betas == [0, 0.99]  # unscaled: the loop applies the lazy-reg ratio
    assert a.ema_rampup == (0.05 if cfg == 'cifar' else None)
    assert ('architecture' in a.D_kwargs) == (cfg == 'cifar')


def test_desc_parts_in_upstream_order():
    resume = dnnlib.EasyDict(name='ffhq256', pkl='https://example.invalid/ffhq256.pkl')
    desc, a = _build(_info(labels=True, name='name'), resume_info=resume, cond=True, subset=4, mirror=True,
                     cfg='cifar', gamma=0.5, kimg=100, batch=16, aug='ada', target=0.7, augpipe='bgcfnc',
                     resume='ffhq256', freezed=2)
    assert desc == 'name-cond-subset4-mirror-cifar-gamma0.5-kimg100-batch16-ada-target0.7-bgcfnc-resumeffhq256-freezed2'
    assert (a.ada_kimg, a.ema_rampup, a.resume_pkl) == (100, None, resume.pkl)
    assert a.training_set_kwargs.max_size == 4 and a.training_set_kwargs.random_seed == 0
    assert list(a)[:5] == ['num_gpus', 'image_snapshot_ticks', 'network_snapshot_ticks', 'metrics', 'random_seed']


def test_transfer_takes_source_architecture():
    src = dnnlib.EasyDict(name=None, pkl='/x/src.pkl', img_resolution=32,
                          G_init_kwargs=dict(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=8),
                                             synthesis_kwargs=dict(channel_base=32768, channel_max=512,
                                                                   num_fp16_res=4, conv_clamp=256)),
                          D_init_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256))
    desc, a = _build(resume_info=src, resume='/x/src.pkl')
    assert desc.endswith('-resumecustom')
    assert a.G_kwargs.mapping_kwargs.num_layers == 8  # auto would give 2
    assert a.G_kwargs.synthesis_kwargs.channel_base == a.D_kwargs.channel_base == 32768
    _, a = _build(resume_info=src, resume='/x/src.pkl', map_depth=4, fp32=True)
    assert a.G_kwargs.mapping_kwargs.num_layers == 4 and a.G_kwargs.synthesis_kwargs.num_fp16_res == 0
    with pytest.raises(opt_lib.OptionError, match='--resume.*64x64'):
        _build(_info(res=64), resume_info=src, resume='/x/src.pkl')


def test_transfer_source_sha256_recorded(tmp_path):
    """--resume PKL: the options record the file's sha256 and the summary shows it."""
    import train
    from patches import network_pickle
    from training import networks
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=128, channel_max=8))
    D = networks.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=128, channel_max=8)
    pkl = str(tmp_path / 'src.pkl')
    network_pickle.save_network_pkl(pkl, dict(G=G.eval(), D=D.eval(), G_ema=G, augment_pipe=None))
    data = write_image_zip(str(tmp_path / 'data.zip'))
    args, _ = train.prepare(dict(outdir=str(tmp_path / 'runs'), data=data, resume=pkl))
    assert args.resume_pkl == pkl and args.resume_pkl_sha256 == dnnlib.util.sha256_file(pkl)
    assert args.G_kwargs.mapping_kwargs.num_layers == 1  # the source's architecture, not auto's
    res = _invoke(['--outdir', str(tmp_path / 'runs'), '--data', data, '--resume', pkl, '-n'])
    assert res.exit_code == 0 and f'(sha256 {args.resume_pkl_sha256[:16]}...)' in res.output


def test_extras_recorded():
    _, a = _build(kimg=100, snap_kimg='100,40,60,80', lr_schedule='ddclr', lr_schedule_target='g', glr=0.001,
                  dlr=0.002, ada_p_max=0.5, metric_num_gen=500, checkpoint_ticks=5)
    assert a.snap_kimg == [40, 60, 80, 100]
    assert a.lr_schedule['func_name'] == 'schedulers.lr.ddclr' and a.lr_schedule_target == 'g'
    assert (a.G_opt_kwargs.lr, a.D_opt_kwargs.lr, a.ada_p_max, a.metric_num_gen, a.checkpoint_ticks) == \
        (0.001, 0.002, 0.5, 500, 5)
    _, a = _build(lr_schedule='none')
    assert 'lr_schedule' not in a
    _, a = _build(ada_p_init=0.25, ada_p_max=0.5, ema_kimg=2.5)
    assert (a.augment_p, a.ema_kimg) == (0.25, 2.5)
    _, a = _build(cfg='paper256')
    assert a.get('augment_p', 0) == 0  # not given: p starts at 0 (the loop's default)
    assert a.ema_kimg == 20  # paper256's own half-life


@pytest.mark.parametrize('opts,flag', [
    (dict(gpus=3), '--gpus'),
    (dict(p=0.5), '--p'),
    (dict(aug='fixed'), '--p'),
    (dict(aug='noaug', augpipe='bgc'), '--augpipe'),
    (dict(aug='fixed', p=0.2, target=0.5), '--target'),
    (dict(gpus=2, batch=5), '--batch'),
    (dict(batch=12, batch_gpu=5), '--batch-gpu'),
    (dict(cfg='stylegan2', batch=24, batch_gpu=6), '--batch-gpu'),  # 6 not a multiple of mbstd group 4
    (dict(kimg=50, snap_kimg='40,60'), '--snap-kimg'),
    (dict(snap_kimg='4x'), '--snap-kimg'),
    (dict(lr_schedule='bogus'), '--lr-schedule'),
    (dict(gamma=-1), '--gamma'),
    (dict(subset=17), '--subset'),
    (dict(cond=True), '--cond'),
    (dict(ada_p_max=0.5, aug='noaug'), '--ada-p-max'),
    (dict(glr=0), '--glr'),
    (dict(ada_p_init=0.2, aug='noaug'), '--ada-p-init'),
    (dict(ada_p_init=1.5), '--ada-p-init'),
    (dict(ada_p_init=0.6, ada_p_max=0.5), '--ada-p-init'),
    (dict(ema_kimg=0), '--ema-kimg'),
])
def test_bad_combinations_name_the_flag(opts, flag):
    with pytest.raises(opt_lib.OptionError) as e:
        _build(**opts)
    assert e.value.flag == flag


def test_non_power_of_two_resolution_is_rejected():
    with pytest.raises(opt_lib.OptionError, match='--data.*power of two'):
        _build(_info(res=48))


def test_find_continuable_run(tmp_path):
    from torch_utils import checkpoint
    _, a = _build()
    for name, stored, finished in [('00000-old', a, False), ('00001-other', dict(a, random_seed=7), False),
                                   ('00002-done', a, True)]:
        os.makedirs(tmp_path / name)
        dnnlib.util.atomic_write_text(str(tmp_path / name / 'training_options.json'),
                                      opt_lib.to_json(dict(stored, run_dir=str(tmp_path / name))))
        checkpoint.save_state(str(tmp_path / name), dict(cur_nimg=4000, finished=finished), 4000)
    found = opt_lib.find_continuable_run(str(tmp_path), a, checkpoint.has_unfinished_state)
    assert found == str(tmp_path / '00000-old')
    assert opt_lib.next_run_dir(str(tmp_path), 'x') == str(tmp_path / '00003-x')
    # A run stored before resume_pkl_sha256 existed continues; one with a different source does not.
    with_sha = dict(a, resume_pkl='/x/src.pkl', resume_pkl_sha256='ab' * 32)
    stored = {k: v for k, v in with_sha.items() if k != 'resume_pkl_sha256'}
    dnnlib.util.atomic_write_text(str(tmp_path / '00000-old' / 'training_options.json'),
                                  opt_lib.to_json(dict(stored, run_dir=str(tmp_path / '00000-old'))))
    assert opt_lib.find_continuable_run(str(tmp_path), with_sha, checkpoint.has_unfinished_state) == \
        str(tmp_path / '00000-old')
    dnnlib.util.atomic_write_text(str(tmp_path / '00000-old' / 'training_options.json'),
                                  opt_lib.to_json(dict(with_sha, run_dir=str(tmp_path / '00000-old'))))
    changed = dict(with_sha, resume_pkl_sha256='cd' * 32)
    assert opt_lib.find_continuable_run(str(tmp_path), changed, checkpoint.has_unfinished_state) is None
    assert opt_lib.find_continuable_run(str(tmp_path), with_sha, checkpoint.has_unfinished_state) == \
        str(tmp_path / '00000-old')


# ----------------------------------------------------------------------------
# The click layer.


def test_dry_run_prints_json_and_creates_nothing(data_zip, tmp_path):
    outdir = tmp_path / 'runs'
    res = _invoke(['--outdir', str(outdir), '--data', data_zip, '--dry-run', '--mirror=1', '--metrics=none',
                   '--lr-schedule=ddclr'])
    assert res.exit_code == 0, res.output
    text = res.output
    start = text.index('{')
    end = text.index('\n}\n', start) + 2
    args = json.loads(text[start:end])
    assert args['run_dir'] == str(outdir / '00000-tiny-mirror-auto1')
    assert args['training_set_kwargs']['xflip'] is True and args['metrics'] == []
    assert args['lr_schedule']['func_name'] == 'schedulers.lr.ddclr'
    assert 'Dry run' in text
    assert not outdir.exists()


@pytest.mark.parametrize('argv,flag', [
    (['--p=0.3'], '--p'),
    (['--kimg=10', '--snap-kimg=5,20'], '--snap-kimg'),
    (['--batch=6', '--batch-gpu=4'], '--batch'),
    (['--metrics=nosuchmetric'], '--metrics'),
])
def test_bad_options_exit_nonzero_with_one_line(data_zip, tmp_path, argv, flag):
    res = _invoke(['--outdir', str(tmp_path), '--data', data_zip, '-n'] + argv)
    assert res.exit_code == 2
    error_lines = [line for line in res.output.splitlines() if line.startswith('Error:')]
    assert len(error_lines) == 1 and flag in error_lines[0], res.output


def test_missing_dataset_names_data(tmp_path):
    res = _invoke(['--outdir', str(tmp_path), '--data', str(tmp_path / 'nope.zip'), '-n'])
    assert res.exit_code == 2 and "'--data'" in res.output


def test_help_hides_test_flags():
    # The help text itself is compared with docs/cli/train.txt by tests/test_cli_docs.py.
    res = _invoke(['--help'])
    assert res.exit_code == 0 and '--cbase' in res.output
    assert '--tick' not in res.output  # hidden test flag


def test_rerunning_the_command_continues_the_unfinished_run(data_zip, tmp_path):
    """Re-running a command finds the run with the same options and an unfinished state."""
    import train
    from torch_utils import checkpoint
    outdir = str(tmp_path / 'runs')
    base = ['--outdir', outdir, '--data', data_zip, '--device=cpu', '--batch=4', '--kimg=1', '--metrics=none']
    res = _invoke(base + ['-n'])
    assert res.exit_code == 0 and 'Continuing' not in res.output
    # What launch() leaves behind for a run that stopped at 400 images.
    opts = dict(outdir=outdir, data=data_zip, device='cpu', batch=4, kimg=1, metrics='none')
    args, continuing = train.prepare(opts)
    assert not continuing
    os.makedirs(args.run_dir)
    dnnlib.util.atomic_write_text(os.path.join(args.run_dir, 'training_options.json'), opt_lib.to_json(args))
    checkpoint.save_state(args.run_dir, dict(cur_nimg=400, finished=False), 400)
    res = _invoke(base + ['-n'])
    assert res.exit_code == 0 and f'Continuing the unfinished run {args.run_dir}' in res.output
    assert '--new-run' in res.output
    res = _invoke(base + ['-n', '--new-run'])
    assert 'Continuing' not in res.output and '00001-tiny' in res.output
    res = _invoke(['--resume', args.run_dir, '-n'])
    assert res.exit_code == 0 and f'Continuing the run in {args.run_dir}' in res.output
    # A different option is a different run.
    res = _invoke(base + ['-n', '--seed=3'])
    assert 'Continuing' not in res.output


def test_launch_writes_run_directory_and_continues(data_zip, tmp_path):
    """train.prepare + train.launch at tiny width: options JSON, log.txt, and a continued second launch."""
    import train
    from torch_utils import checkpoint
    opts = dict(outdir=str(tmp_path), data=data_zip, device='cpu', cfg='paper256', fp32=True, batch=4, kimg=1,
                metrics='none', workers=0, aug='noaug', tick=0.004, snap=1000, checkpoint_ticks=1)
    args, continuing = train.prepare(opts)
    assert not continuing and os.path.basename(args.run_dir) == '00000-tiny-paper256-kimg1-batch4-noaug'
    # Shrink the networks and the budget (the CLI has no flags for that), then launch as train.py does.
    for kw in (args.G_kwargs.synthesis_kwargs, args.D_kwargs):
        kw.channel_base, kw.channel_max = 256, 16
    args.G_kwargs.z_dim = args.G_kwargs.w_dim = 32
    args.total_kimg = 0.008
    train.launch(args, continuing=False)
    with open(os.path.join(args.run_dir, 'training_options.json')) as f:
        stored = json.load(f)
    assert stored['run_dir'] == args.run_dir and stored['kimg_per_tick'] == 0.004
    with open(os.path.join(args.run_dir, 'log.txt')) as f:
        log = f.read()
    assert log.startswith('Loading training set...') and 'tick 1 ' in log
    assert checkpoint.read_progress(checkpoint.latest_state_path(args.run_dir)) == (8, True)
    # A finished run is not continued: re-running starts a new one.
    assert opt_lib.find_continuable_run(str(tmp_path), args, checkpoint.has_unfinished_state) is None
