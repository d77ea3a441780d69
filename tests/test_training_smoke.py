"""Training-loop smoke tests on CPU: a tiny 32x32 GAN for a few dozen images.

Checked: losses finite, every trainable parameter receives a finite gradient in the main phases,
the lazy-regularisation phase pattern, lr schedules applied every step (with the I/(I+1) ratio),
kimg-point snapshots, and the run-directory contents.
"""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

import schedulers
from training_helpers import ada_kwargs, list_files, read_jsonl, tiny_loop_kwargs, write_image_zip


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    return write_image_zip(str(tmp_path_factory.mktemp('data') / 'tiny.zip'))


def _grad_report(module):
    """name -> (has grad, finite, norm) for every trainable parameter."""
    out = {}
    for name, p in module.named_parameters():
        g = p.grad
        out[name] = (g is not None, g is not None and bool(torch.isfinite(g).all()),
                     0.0 if g is None else float(g.norm()))
    return out


@pytest.fixture(scope='module')
def smoke_run(data_zip, tmp_path_factory):
    """One short ADA run with an lr schedule; records per-step lr and gradients."""
    from training import training_loop
    run_dir = str(tmp_path_factory.mktemp('run'))
    sched = schedulers.parse_lr_schedule('exp:first=0.003,final=0.0005')
    record = dict(steps=[], grads=None)

    def on_iteration(model, counters, step):
        record['steps'].append(dict(nimg=step.nimg, phases=list(step.phases), batch_idx=counters.batch_idx,
                                    lr_G=model.opts['G'].opt.param_groups[0]['lr'],
                                    lr_D=model.opts['D'].opt.param_groups[0]['lr']))
        if list(step.phases) == ['Gmain', 'Dmain'] and record['grads'] is None:
            record['grads'] = dict(G=_grad_report(model.G), D=_grad_report(model.D))

    kw = tiny_loop_kwargs(data_zip, run_dir, total_kimg=0.048, kimg_per_tick=0.016, snap_kimg=[0.012, 0.03],
                          lr_schedule=sched, lr_schedule_target='both', iteration_fn=on_iteration,
                          image_snapshot_ticks=2, network_snapshot_ticks=2,
                          **ada_kwargs(ada_kimg=0.1))
    result = training_loop.training_loop(**kw)
    return dict(model=result.model, run_dir=run_dir, record=record, sched=sched)


def test_losses_finite_and_stats_written(smoke_run):
    rows = read_jsonl(os.path.join(smoke_run['run_dir'], 'stats.jsonl'))
    assert len(rows) >= 3
    for key in ('Loss/G/loss', 'Loss/D/loss', 'Loss/scores/real', 'Loss/scores/fake', 'Loss/signs/real'):
        assert key in rows[-1], key
        assert all(math.isfinite(r[key]['mean']) for r in rows if key in r and r[key]['num'] > 0), key
    for key in ('Progress/lr_G', 'Progress/lr_D', 'Progress/opt_lr_G', 'Progress/opt_lr_D', 'Progress/kimg', 'Progress/augment', 'Timing/sec_per_kimg',
                'Timing/data_wait_sec', 'Grads/G/nonfinite', 'Grads/D/nonfinite'):
        assert key in rows[-1], key
    # one loader wait per iteration of 4 images; no NaN/Inf gradients in a healthy run
    assert sum(r['Timing/data_wait_sec']['num'] for r in rows) == 48 // 4
    assert all(r['Timing/data_wait_sec']['mean'] >= 0 for r in rows if r['Timing/data_wait_sec']['num'])
    assert all(r[k]['mean'] == 0 for r in rows for k in ('Grads/G/nonfinite', 'Grads/D/nonfinite') if r[k]['num'])
    # the last tick ends exactly at the budget: 48 images
    assert rows[-1]['Progress/kimg']['mean'] == pytest.approx(0.048)
    for tensor in list(smoke_run['model'].G.parameters()) + list(smoke_run['model'].D.parameters()):
        assert torch.isfinite(tensor).all()


def test_every_trainable_parameter_gets_a_gradient(smoke_run):
    grads = smoke_run['record']['grads']
    assert grads is not None, 'no iteration ran exactly the Gmain and Dmain phases'
    for net in ('G', 'D'):
        missing = [n for n, (has, _, _) in grads[net].items() if not has]
        nonfinite = [n for n, (has, fin, _) in grads[net].items() if has and not fin]
        zero = [n for n, (has, _, norm) in grads[net].items() if has and norm == 0]
        assert not missing, f'{net} parameters without gradient: {missing}'
        assert not nonfinite, f'{net} parameters with non-finite gradient: {nonfinite}'
        assert not zero, f'{net} parameters with an all-zero gradient: {zero}'


def test_phase_pattern_follows_lazy_regularisation(smoke_run):
    # Greg every 4 iterations, Dreg every 16 (upstream's G_reg_interval / D_reg_interval).
    for step in smoke_run['record']['steps']:
        i = step['batch_idx'] - 1
        expected = ['Gmain'] + (['Greg'] if i % 4 == 0 else []) + ['Dmain'] + (['Dreg'] if i % 16 == 0 else [])
        assert step['phases'] == expected, (i, step['phases'])


def test_lr_follows_schedule_with_lazy_reg_ratio(smoke_run):
    steps = smoke_run['record']['steps']
    assert [s['nimg'] for s in steps] == list(range(0, 48, 4))
    first, final, total = 0.003, 0.0005, 48.0
    for s in steps:
        base = first * (final / first) ** (s['nimg'] / total)  # exp schedule, closed form
        assert s['lr_G'] == pytest.approx(base * 4 / 5, rel=1e-12)
        assert s['lr_D'] == pytest.approx(base * 16 / 17, rel=1e-12)
    # Each tick logs the schedule's value (the paper's curve) and, apart, the optimizer's scaled lr,
    # both of the tick's last step.
    rows = read_jsonl(os.path.join(smoke_run['run_dir'], 'stats.jsonl'))
    last = first * (final / first) ** (steps[-1]['nimg'] / total)
    assert rows[-1]['Progress/lr_G']['mean'] == pytest.approx(last, rel=1e-6)  # stats store float32 samples
    assert rows[-1]['Progress/lr_D']['mean'] == pytest.approx(last, rel=1e-6)
    assert rows[-1]['Progress/opt_lr_G']['mean'] == pytest.approx(steps[-1]['lr_G'], rel=1e-6)
    assert rows[-1]['Progress/opt_lr_D']['mean'] == pytest.approx(steps[-1]['lr_D'], rel=1e-6)


def test_kimg_point_snapshots(smoke_run):
    run_dir = smoke_run['run_dir']
    pkls = list_files(run_dir, 'network-snapshot-')
    # kimg points 0.012 (reached at 12 images) and 0.030 (first reached at 32 images),
    # plus tick snapshots by cur_nimg // 1000 (all 000000 here).
    assert 'network-snapshot-000000.012.pkl' in pkls
    assert 'network-snapshot-000000.030.pkl' in pkls
    assert 'network-snapshot-000000.pkl' in pkls
    from patches import network_pickle
    data = network_pickle.load_network_pkl(os.path.join(run_dir, 'network-snapshot-000000.030.pkl'))
    assert data['G_ema'] is not None and data['D'] is not None
    with open(os.path.join(run_dir, 'network-snapshot-000000.030.pkl'), 'rb') as f:
        raw = pickle.load(f)
    assert raw['cur_nimg'] == 32  # actual images seen, recorded inside
    assert 'fakes000000.030.png' in list_files(run_dir, 'fakes')


def test_run_directory_contents(smoke_run):
    names = os.listdir(smoke_run['run_dir'])
    for expected in ('reals.png', 'fakes_init.png', 'stats.jsonl'):
        assert expected in names
    states = sorted(n for n in names if n.startswith('training-state-'))
    assert states == ['training-state-000000.028.pt', 'training-state-000000.048.pt']  # the newest two are kept
    status = json.load(open(os.path.join(smoke_run['run_dir'], 'status.json')))
    assert status == dict(state='finished', cur_kimg=0.048, total_kimg=0.048, evaluated_kimg=[0.012, 0.03],
                          metrics=[], snap_kimg=[0.012, 0.03], cur_tick=status['cur_tick'])


def test_tensorboard_events_mirror_stats_jsonl(smoke_run):
    """With tensorboard installed, every tick's means also go to a tfevents file in the run directory."""
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert any(n.startswith('events.out.tfevents.') for n in os.listdir(smoke_run['run_dir']))
    events = EventAccumulator(smoke_run['run_dir'])
    events.Reload()
    rows = read_jsonl(os.path.join(smoke_run['run_dir'], 'stats.jsonl'))
    for key in ('Loss/G/loss', 'Progress/lr_G', 'Progress/kimg'):
        logged = [e.value for e in events.Scalars(key)]
        expected = [r[key]['mean'] for r in rows if key in r]
        assert logged == pytest.approx(expected, rel=1e-6, abs=1e-12), key
    assert [e.step for e in events.Scalars('Progress/kimg')] == [int(r['Progress/kimg']['mean']) for r in rows]


def test_ada_starts_from_the_initial_p(data_zip, tmp_path):
    """augment_p (train.py --ada-p-init) is the p of the first iterations under ADA."""
    from training import training_loop
    seen = []
    kw = tiny_loop_kwargs(data_zip, str(tmp_path), total_kimg=0.008, augment_p=0.35,
                          iteration_fn=lambda model, counters, step: seen.append(float(model.augment_pipe.p)),
                          **ada_kwargs(ada_kimg=100))
    training_loop.training_loop(**kw)
    assert seen and seen[0] == pytest.approx(0.35)


def test_sanitise_grads_counts_and_replaces():
    from training.phases import sanitise_grads
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    a.grad = torch.tensor([1.0, float('nan'), float('inf')])
    b.grad = torch.tensor([[float('-inf'), 2.0], [3.0, 4.0]])
    assert int(sanitise_grads([a, b])) == 3
    assert a.grad.tolist() == [1.0, 0.0, 1e5] and b.grad.tolist() == [[-1e5, 2.0], [3.0, 4.0]]
    assert int(sanitise_grads([a, b])) == 0


def test_nonfinite_gradients_are_counted_and_logged(data_zip, tmp_path, monkeypatch, capsys):
    """A NaN injected into G's gradient in the first Gmain phase is zeroed, counted and reported."""
    from training import loss as loss_lib
    from training import training_loop
    original = loss_lib.StyleGAN2Loss.accumulate_gradients
    injected = []

    def poisoned(self, phase, **kw):
        original(self, phase, **kw)
        if phase == 'Gmain' and not injected:
            weight = next(p for p in self.G_synthesis.parameters() if p.grad is not None)
            weight.grad.view(-1)[:5] = float('nan')
            injected.append(5)

    monkeypatch.setattr(loss_lib.StyleGAN2Loss, 'accumulate_gradients', poisoned)
    run_dir = str(tmp_path / 'run')
    model = training_loop.training_loop(**tiny_loop_kwargs(data_zip, run_dir, total_kimg=0.016, kimg_per_tick=0.008)).model
    rows = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    totals = [round(r['Grads/G/nonfinite']['mean'] * r['Grads/G/nonfinite']['num']) for r in rows
              if r.get('Grads/G/nonfinite', {}).get('num')]
    assert sum(totals) == 5 and injected == [5]
    assert all(r['Grads/D/nonfinite']['mean'] == 0 for r in rows if r.get('Grads/D/nonfinite', {}).get('num'))
    assert 'Warning: 5 non-finite gradient values in G' in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in model.G.parameters())


def test_ada_p_moves_by_closed_form_steps(smoke_run):
    # p changes in steps of batch * interval / (ada_kimg * 1000) = 4 * 4 / 100 = 0.16.
    p = smoke_run['model'].ada.p
    assert p >= 0
    assert (p / 0.16) == pytest.approx(round(p / 0.16), abs=1e-6)  # p lives in a float32 buffer
    assert smoke_run['model'].ada.p == float(smoke_run['model'].augment_pipe.p)


def test_sampler_is_pure_function_of_position():
    from training.sampler import InfiniteSampler, item_at
    ds = list(range(10))
    full = InfiniteSampler(ds, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(35)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream == [item_at(10, 3, k) for k in range(35)]
    later = iter(InfiniteSampler(ds, seed=3, start_idx=17))
    assert [next(later) for _ in range(18)] == stream[17:]
    # Two ranks take alternate positions of the same global stream.
    r0 = iter(InfiniteSampler(ds, rank=0, num_replicas=2, seed=3, start_idx=6))
    r1 = iter(InfiniteSampler(ds, rank=1, num_replicas=2, seed=3, start_idx=6))
    assert [next(r0) for _ in range(5)] == stream[6:16:2]
    assert [next(r1) for _ in range(5)] == stream[7:17:2]
    assert not np.array_equal([item_at(10, 4, k) for k in range(10)], stream[:10])


def test_metrics_run_on_each_network_snapshot(data_zip, tmp_path, monkeypatch):
    """Wiring only (a real FID needs the detector): calc_metric is faked, report_metric is real; the
    loop gets the metrics as train.py's callback (training/ never imports metrics/)."""
    import dnnlib
    import train
    from metrics import metric_main
    from training import training_loop
    calls = []

    def fake_calc_metric(metric, G, dataset_kwargs, num_gpus=1, rank=0, device=None, num_gen=None, **kw):
        calls.append(dict(metric=metric, dataset_kwargs=dataset_kwargs, num_gen=num_gen, G_device=next(G.parameters()).device,
                          progress=kw.get('progress')))
        return dnnlib.EasyDict(results=dnnlib.EasyDict({metric: 1.5}), metric=metric, total_time=0.0,
                               total_time_str='0s', num_gpus=num_gpus, detector=None, num_gen=num_gen)

    monkeypatch.setattr(metric_main, 'calc_metric', fake_calc_metric)
    metric_data = dict(class_name='training.dataset.ImageFolderDataset', path=data_zip, use_labels=False)
    run_dir = str(tmp_path)
    metric_fn = train.make_metric_fn(['fid50k_full'], metric_data, num_gen=7, num_gpus=1, rank=0, run_dir=run_dir)
    training_loop.training_loop(**tiny_loop_kwargs(data_zip, run_dir, total_kimg=0.008, metrics=['fid50k_full'],
                                                   metric_fn=metric_fn))
    assert [c['num_gen'] for c in calls] == [7, 7]  # tick 0 and the final tick
    assert all(c['dataset_kwargs'] == metric_data and c['G_device'].type == 'cpu' for c in calls)
    assert all(c['progress'] is True for c in calls)  # tqdm bars on rank 0 during long evaluations
    lines = read_jsonl(os.path.join(run_dir, 'metric-fid50k_full.jsonl'))
    assert [(r['snapshot_pkl'], r['kimg']) for r in lines] == [('network-snapshot-000000.pkl', 0.004),
                                                               ('network-snapshot-000000.pkl', 0.008)]


@pytest.mark.gpu
def test_cuda_mixed_precision_smoke(data_zip, tmp_path):
    """On a GPU: fp16 layers with clamping, ADA, CUDA timing events; everything finite."""
    from training import training_loop
    kw = tiny_loop_kwargs(data_zip, str(tmp_path), device='cuda', total_kimg=0.032, **ada_kwargs())
    for key in ('G_kwargs', 'D_kwargs'):
        target = kw[key]['synthesis_kwargs'] if key == 'G_kwargs' else kw[key]
        target.update(num_fp16_res=2, conv_clamp=256)
    model = training_loop.training_loop(**kw).model
    rows = read_jsonl(os.path.join(str(tmp_path), 'stats.jsonl'))
    assert math.isfinite(rows[-1]['Loss/G/loss']['mean']) and 'Timing/Gmain' in rows[-1]
    assert rows[-1]['Resources/peak_gpu_mem_gb']['mean'] > 0
    assert all(torch.isfinite(p).all() for p in model.G_ema.parameters())


def test_long_ticks_print_progress_lines(data_zip, tmp_path, monkeypatch, capsys):
    """Within a tick, a progress line appears once PROGRESS_LINE_SEC has passed (0 here: every step)."""
    from training import ticks, training_loop
    monkeypatch.setattr(ticks, 'PROGRESS_LINE_SEC', 0)
    training_loop.training_loop(**tiny_loop_kwargs(data_zip, str(tmp_path), total_kimg=0.016, kimg_per_tick=0.008))
    lines = [line for line in capsys.readouterr().out.splitlines() if 'in progress' in line]
    # 4 steps: tick 0 ends after step 1, tick 1 after step 3 (8 images), tick 2 after step 4; step 2 is mid-tick.
    assert [line.split(',')[0] for line in lines] == ['  ... tick 1 in progress: kimg 0.008']
    assert lines[0].endswith('into the tick')
