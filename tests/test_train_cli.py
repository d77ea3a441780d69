"""train.py options: cfg table, auto derivation, run naming, validation messages, dry run, --help."""

import json
import os

import pytest
from click.testing import CliRunner

import dnnlib
from training import options as opt_lib
from training import run_dir as run_dir_lib
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
    assert a.batch_gpu == batch_gpu  # mb // ref_gpus, not mb // gpus (as upstream)
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


def _fake_run(outdir, name, args, finished=None):
    """A run directory as launch() leaves it: options, and optionally a checkpoint (finished or not)."""
    from torch_utils import checkpoint
    run_dir = os.path.join(str(outdir), name)
    os.makedirs(run_dir)
    dnnlib.util.atomic_write_text(os.path.join(run_dir, 'training_options.json'),
                                  run_dir_lib.to_json(dict(args, run_dir=run_dir)))
    if finished is not None:
        checkpoint.save_state(run_dir, dict(x=1), 4000, meta=dict(finished=finished))
    return run_dir


def test_find_matching_runs(tmp_path):
    _, a = _build()
    old = _fake_run(tmp_path, '00000-old', a, finished=False)
    _fake_run(tmp_path, '00001-other', dict(a, random_seed=7), finished=False)
    done = _fake_run(tmp_path, '00002-done', a, finished=True)
    assert run_dir_lib.find_matching_runs(str(tmp_path), a) == [done, old]
    assert run_dir_lib.next_run_dir(str(tmp_path), 'x') == str(tmp_path / '00003-x')
    # A run stored before resume_pkl_sha256 existed matches; one with a different source does not.
    with_sha = dict(a, resume_pkl='/x/src.pkl', resume_pkl_sha256='ab' * 32)
    stored = {k: v for k, v in with_sha.items() if k != 'resume_pkl_sha256'}
    assert run_dir_lib.same_options(run_dir_lib.normalise(stored), with_sha)
    assert not run_dir_lib.same_options(with_sha, dict(with_sha, resume_pkl_sha256='cd' * 32))


def _claim_worker(outdir, barrier, queue):
    barrier.wait()
    run_dir, lock = run_dir_lib.claim_new_run_dir(outdir, 'x', lambda d: '{}')
    queue.put(run_dir)
    lock.close()


def test_concurrent_claims_get_different_run_dirs(tmp_path):
    """Several starts released at the same moment: each gets its own directory, none fails."""
    import multiprocessing
    ctx = multiprocessing.get_context('fork')
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(str(tmp_path), barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    dirs = sorted(queue.get(timeout=10) for _ in procs)
    assert dirs == [str(tmp_path / f'{i:05d}-x') for i in range(4)]
    assert all(os.path.isfile(os.path.join(d, 'training_options.json')) for d in dirs)


def test_a_run_locked_by_another_process_is_not_continued(data_zip, tmp_path):
    """A concurrent start of the same command never trains in the run dir of a live process."""
    import train
    opts = dict(outdir=str(tmp_path), data=data_zip, device='cpu', batch=4, kimg=1, metrics='none')
    args, plan = train.prepare(opts)
    run_dir = _fake_run(tmp_path, os.path.basename(args.run_dir), args, finished=False)
    held = run_dir_lib.RunLock(run_dir)  # as if training there now
    try:
        args2, plan2 = train.prepare(opts)
        assert plan2.kind == 'new' and args2.run_dir != run_dir
    finally:
        held.close()
    args3, plan3 = train.prepare(opts)
    assert (plan3.kind, args3.run_dir) == ('continue', run_dir)
    plan3.lock.close()


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


def test_help_documents_ticks_and_preemption():
    # The help text itself is compared with docs/cli/train.txt by tests/test_cli_docs.py.
    res = _invoke(['--help'])
    assert res.exit_code == 0 and '--cbase' in res.output
    assert '--tick, --kimg-per-tick KIMG' in res.output and 'exit with status 75' in res.output
    assert '--resume=ffhq512 --cfg=paper512' in res.output
    _, a = _build(tick=0.5)
    assert a.kimg_per_tick == 0.5
    _, a = _build()
    assert 'kimg_per_tick' not in a  # the loop's default 4, not written (as upstream's options)


def test_rerunning_the_command_continues_the_unfinished_run(data_zip, tmp_path):
    """Re-running a command finds the run with the same options and an unfinished state."""
    import train
    outdir = str(tmp_path / 'runs')
    base = ['--outdir', outdir, '--data', data_zip, '--device=cpu', '--batch=4', '--kimg=1', '--metrics=none']
    res = _invoke(base + ['-n'])
    assert res.exit_code == 0 and 'Continuing' not in res.output
    opts = dict(outdir=outdir, data=data_zip, device='cpu', batch=4, kimg=1, metrics='none')
    args, plan = train.prepare(opts)
    assert plan.kind == 'new'
    _fake_run(outdir, os.path.basename(args.run_dir), args, finished=False)
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


def test_a_run_dir_without_checkpoint_is_reused_and_damaged_states_refused(data_zip, tmp_path):
    import train
    from torch_utils import checkpoint
    opts = dict(outdir=str(tmp_path), data=data_zip, device='cpu', batch=4, kimg=1, metrics='none')
    args, _ = train.prepare(opts)
    run_dir = _fake_run(tmp_path, os.path.basename(args.run_dir), args)
    args2, plan = train.prepare(opts)
    assert (plan.kind, args2.run_dir) == ('reuse', run_dir)  # never reached a checkpoint: not orphaned
    plan.lock.close()
    path = checkpoint.save_state(run_dir, dict(x=1), 4000, meta=dict(finished=False))
    with open(path, 'r+b') as f:
        f.write(b'\0' * 64)
    res = _invoke(['--outdir', str(tmp_path), '--data', data_zip, '--device=cpu', '--batch=4', '--kimg=1',
                   '--metrics=none', '-n'])
    assert res.exit_code == 2 and 'training-state files are all damaged' in res.output
    assert len([line for line in res.output.splitlines() if line.startswith('Error')]) == 1


def _tiny_launch_opts(outdir, data_zip, **extra):
    opts = dict(outdir=str(outdir), data=data_zip, device='cpu', cfg='paper256', fp32=True, batch=4, kimg=1,
                metrics='none', workers=0, aug='noaug', tick=0.004, snap=1000, checkpoint_ticks=1)
    opts.update(extra)
    return opts


def _shrink(args):
    """Tiny networks and budget (the CLI has no flags for that), as the options JSON will record them."""
    for kw in (args.G_kwargs.synthesis_kwargs, args.D_kwargs):
        kw.channel_base, kw.channel_max = 256, 16
    args.G_kwargs.z_dim = args.G_kwargs.w_dim = 32
    args.total_kimg = 0.008


def test_launch_writes_run_directory_and_a_rerun_says_finished(data_zip, tmp_path, capsys):
    """train.prepare + train.launch at tiny width: options JSON, log.txt, status.json; then one line."""
    import train
    from torch_utils import checkpoint
    args, plan = train.prepare(_tiny_launch_opts(tmp_path, data_zip))
    assert plan.kind == 'new' and os.path.basename(args.run_dir) == '00000-tiny-paper256-kimg1-batch4-noaug'
    _shrink(args)
    assert train.launch(args, plan) == 'finished'
    with open(os.path.join(args.run_dir, 'training_options.json')) as f:
        stored = json.load(f)
    assert stored['run_dir'] == args.run_dir and stored['kimg_per_tick'] == 0.004
    with open(os.path.join(args.run_dir, 'log.txt')) as f:
        log = f.read()
    assert log.startswith('Loading training set...') and 'tick 1 ' in log
    assert checkpoint.run_progress(args.run_dir) == dict(finished=True, cur_nimg=8, outputs=checkpoint.run_progress(
        args.run_dir)['outputs'])
    # The same command again: the stored (shrunk) options match, the run is finished: one line, exit 0.
    args2, plan2 = train.prepare(dict(_tiny_launch_opts(tmp_path, data_zip)))
    args2.update(json.loads(json.dumps(stored)))
    plan2 = train._previous_run(str(tmp_path), args2, dry_run=False)
    assert plan2.kind == 'finished'
    line = train.finished_line(plan2.run_dir)
    assert line.startswith(f'{args.run_dir}: finished at 0.008 kimg (no metrics') and '--new-run' in line


def test_finished_run_prints_one_line_and_exits_0(data_zip, tmp_path):
    import train
    args, _ = train.prepare(dict(outdir=str(tmp_path), data=data_zip, device='cpu', batch=4, kimg=1))
    run_dir = _fake_run(tmp_path, os.path.basename(args.run_dir), args, finished=True)
    dnnlib.util.atomic_write_text(os.path.join(run_dir, 'status.json'), json.dumps(dict(
        state='finished', cur_kimg=1.0, total_kimg=1.0, evaluated_kimg=[0.5, 1.0], metrics=['fid50k_full'],
        snap_kimg=[0.5, 1.0])))
    res = _invoke(['--outdir', str(tmp_path), '--data', data_zip, '--device=cpu', '--batch=4', '--kimg=1'])
    assert res.exit_code == 0
    assert res.output.strip().splitlines() == [
        f'{run_dir}: finished at 1 kimg (fid50k_full at 0.5, 1); nothing to do. Pass --new-run to start another run.']
    res = _invoke(['--resume', run_dir])
    assert res.exit_code == 0 and res.output.strip().splitlines()[-1].startswith(f'{run_dir}: finished at 1 kimg')


def test_outdir_that_is_a_file_is_one_line(data_zip, tmp_path):
    import train
    outdir = tmp_path / 'file'
    outdir.write_text('not a directory')
    args, plan = train.prepare(_tiny_launch_opts(outdir, data_zip))
    with pytest.raises(Exception) as e:
        train.launch(args, plan)
    assert "cannot create a run directory there" in e.value.format_message()


@pytest.fixture
def tiny_mount(tmp_path):
    """A 256 KiB tmpfs (root only); skipped where mounting is not permitted."""
    import subprocess
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(mnt)], capture_output=True).returncode:
        pytest.skip('mounting a tmpfs is not permitted here')
    try:
        yield mnt
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_read_only_outdir_is_one_line(data_zip, tiny_mount):
    import subprocess
    subprocess.run(['mount', '-o', 'remount,ro', str(tiny_mount)], check=True)
    res = _invoke(['--outdir', str(tiny_mount / 'runs'), '--data', data_zip, '--device=cpu', '--metrics=none'])
    assert res.exit_code == 2 and 'cannot create a run directory there: Read-only file system' in res.output
    assert len([line for line in res.output.splitlines() if line.startswith('Error')]) == 1


def test_full_disk_during_a_checkpoint_is_one_line(data_zip, tmp_path, tiny_mount):
    """ENOSPC while writing: one line naming the file, no traceback, no temp files left."""
    import click
    import train
    args, plan = train.prepare(_tiny_launch_opts(tiny_mount, data_zip))
    _shrink(args)
    with pytest.raises(click.ClickException) as e:
        train._train_with_one_line_errors(train.launch, args, plan)
    message = e.value.format_message()
    assert 'No space left on device' in message and str(tiny_mount) in message and '\n' not in message
    assert not [n for n in os.listdir(args.run_dir) if n.endswith('.tmp')]


def test_sigterm_exits_75_through_the_cli(data_zip, tmp_path):
    """train.py itself: SIGTERM during training -> checkpoint, status 'preempted', exit status 75."""
    import signal
    import subprocess
    import sys
    import time
    outdir = tmp_path / 'runs'
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--outdir={outdir}', f'--data={data_zip}', '--device=cpu',
           '--batch=4', '--kimg=1', '--cbase=256', '--cmax=16', '--map-depth=2', '--metrics=none', '--aug=noaug',
           '--workers=0', '--snap=1000', '--kimg-per-tick=0.004']
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=dict(os.environ, OMP_NUM_THREADS='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600  # hang guard only
    while time.time() < deadline and not list(outdir.glob('*/training-state-*.pt')):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 75, out[-3000:]
    (run_dir,) = outdir.iterdir()
    assert json.load(open(run_dir / 'status.json'))['state'] == 'preempted'


def test_two_concurrent_starts_of_one_command_train_in_different_run_dirs(data_zip, tmp_path):
    """Two train.py processes started together with the same --outdir: both start training, each in its
    own run directory (then SIGTERM stops both with a checkpoint, exit status 75)."""
    import signal
    import subprocess
    import sys
    import time
    outdir = tmp_path / 'runs'
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--outdir={outdir}', f'--data={data_zip}', '--device=cpu',
           '--batch=4', '--kimg=1', '--cbase=256', '--cmax=16', '--map-depth=2', '--metrics=none', '--aug=noaug',
           '--workers=0', '--snap=1000', '--tick=0.004']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    deadline = time.time() + 600  # hang guard only
    while time.time() < deadline and len(list(outdir.glob('*/training-state-*.pt'))) < 2:
        assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs]
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], [o[-2000:] for o in outs]
    assert sorted(d.name[:5] for d in outdir.iterdir()) == ['00000', '00001']
    assert not any('Traceback' in o for o in outs)
