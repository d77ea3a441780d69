"""The training state's parts: built by class name from their kwargs (recorded in training_options.json,
swappable by configuration), and checkpointed through one registry used by save and load alike."""

import json
import os

import pytest
import torch

import dnnlib
from training.ada import AdaController
from training.ema import Ema
from training_helpers import ada_kwargs, tiny_loop_kwargs, write_image_zip

CALLS = []


class RecordingEma(Ema):
    """Ema that records the images seen at each update (a stand-in for a user's own averager)."""

    def update(self, cur_nimg, batch_size):
        CALLS.append(('ema', cur_nimg))
        super().update(cur_nimg, batch_size)


class RecordingAda(AdaController):
    def after_step(self, batch_idx):
        CALLS.append(('ada', batch_idx))
        super().after_step(batch_idx)


@pytest.fixture(scope='module')
def data_zip(tmp_path_factory):
    return write_image_zip(str(tmp_path_factory.mktemp('data') / 'tiny.zip'))


def test_ema_and_ada_classes_and_kwargs_come_from_configuration(data_zip, tmp_path):
    from training import training_loop
    CALLS.clear()
    kw = tiny_loop_kwargs(data_zip, str(tmp_path), total_kimg=0.008, kimg_per_tick=0.008,
                          ema_kwargs=dict(class_name=f'{__name__}.RecordingEma', ema_kimg=123.0),
                          ada_kwargs=dict(class_name=f'{__name__}.RecordingAda', interval=1), **ada_kwargs())
    model = training_loop.training_loop(**kw).model
    assert type(model.ema) is RecordingEma and type(model.ada) is RecordingAda
    # A key in the part's kwargs overrides the upstream-named option (ema_kimg=0.01 in tiny_loop_kwargs).
    assert model.ema.ema_kimg == 123.0 and model.ada.interval == 1
    assert CALLS == [('ema', 0), ('ada', 1), ('ema', 4), ('ada', 2)]


def test_the_registry_saves_and_loads_every_registered_part():
    from torch_utils import checkpoint
    from training.counters import Counters
    saved, loaded = Counters(cur_nimg=8, cur_tick=2, batch_idx=2, tick_start_nimg=8, points_done=[0.004]), Counters()
    linear, fresh = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    save, load = checkpoint.Registry(), checkpoint.Registry()
    for registry, counters, module in ((save, saved, linear), (load, loaded, fresh)):
        registry.register('counters', counters)
        registry.register('net', module)
        registry.register('absent', None)  # e.g. no ADA controller: saved as None, skipped on load
    parts = save.parts()
    assert list(parts) == ['counters', 'net', 'absent'] and parts['absent'] is None
    load.load(parts)
    assert loaded == saved and torch.equal(fresh.weight, linear.weight)
    with pytest.raises(AssertionError, match='twice'):
        load.register('net', fresh)


# ----------------------------------------------------------------------------
# training_options.json: the part classes are recorded; runs stored without them still match.


def _run_dir(outdir, name, args, drop=()):
    from torch_utils import checkpoint
    run_dir = os.path.join(str(outdir), name)
    os.makedirs(run_dir)
    stored = {k: v for k, v in dict(args, run_dir=run_dir).items() if k not in drop}
    with open(os.path.join(run_dir, 'training_options.json'), 'w', encoding='utf-8') as f:
        json.dump(stored, f, indent=2)
    checkpoint.save_state(run_dir, dict(x=1), 4000, meta=dict(finished=False))
    return run_dir


def test_options_record_the_part_classes():
    from training import options as opt_lib
    info = dnnlib.EasyDict(name='data', num_images=16, resolution=32, num_channels=3, has_labels=False, label_dim=0)
    _, args = opt_lib.build_training_options(dict(data='/x/data.zip'), dataset_info=info)
    assert args.ema_kwargs == dict(class_name='training.ema.Ema')
    assert args.ada_kwargs == dict(class_name='training.ada.AdaController')
    assert list(args)[-2:] == ['ema_kwargs', 'ada_kwargs']  # new keys last


def test_a_run_stored_without_the_part_classes_is_continued_by_the_same_command(data_zip, tmp_path):
    """A run dir whose training_options.json predates ema_kwargs/ada_kwargs is the same run."""
    import train
    opts = dict(outdir=str(tmp_path), data=data_zip, device='cpu', batch=4, kimg=1, metrics='none')
    args, _ = train.prepare(opts, allow_download=False)
    old = _run_dir(tmp_path, os.path.basename(args.run_dir), args, drop=('ema_kwargs', 'ada_kwargs'))
    args2, plan = train.prepare(opts, allow_download=False)
    assert plan.kind == 'continue' and args2.run_dir == old


def test_a_different_part_class_is_a_different_run():
    from training import run_dir as run_dir_lib
    base = dict(random_seed=0, ema_kwargs=dict(class_name='training.ema.Ema'),
                ada_kwargs=dict(class_name='training.ada.AdaController'))
    other = dict(base, ema_kwargs=dict(class_name='my.Ema'))
    without = {k: v for k, v in base.items() if k == 'random_seed'}
    assert run_dir_lib.same_options(without, base)
    assert not run_dir_lib.same_options(without, other)  # an absent key meant the default class
    assert not run_dir_lib.same_options(base, other)
