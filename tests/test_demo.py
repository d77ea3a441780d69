"""The demo's pieces (scripts/demo.py), on tiny inputs; the whole demo takes minutes and is not run here."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import schedulers
from scripts import demo

matplotlib = pytest.importorskip('matplotlib')
sklearn = pytest.importorskip('sklearn')


def _hashes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_sources_have_the_celebamask_layout_and_are_reproducible(tmp_path):
    source, celeba, generated = demo.make_sources(str(tmp_path / 'a'))
    assert len(os.listdir(source)) == demo.NUM_SOURCE
    assert sorted(os.listdir(os.path.join(celeba, 'CelebA-HQ-img')))[:3] == ['0.jpg', '1.jpg', '10.jpg']
    assert len(os.listdir(os.path.join(celeba, 'CelebA-HQ-img'))) == demo.NUM_REAL_POOL
    assert len(os.listdir(generated)) == demo.NUM_GENERATED_POOL
    # The pretraining, real and generated digits are disjoint slices of sklearn's 1797 digits.
    assert demo.NUM_SOURCE + demo.NUM_REAL_POOL + demo.NUM_GENERATED_POOL <= 1797
    demo.make_sources(str(tmp_path / 'b'))
    assert _hashes(str(tmp_path / 'a')) == _hashes(str(tmp_path / 'b'))


def _stroke_colour(img):
    bright = img.sum(axis=2) > np.percentile(img.sum(axis=2), 90)
    return img[bright].mean(axis=0)


def test_sources_look_different_per_domain(tmp_path):
    source, celeba, generated = demo.make_sources(str(tmp_path))
    # Source domain: strokes of many colours (their brightest pixels differ in hue from image to image).
    tints = [_stroke_colour(np.asarray(Image.open(os.path.join(source, f'digit{i:04d}.png')), np.float32))
             for i in range(20)]
    assert np.ptp(np.stack(tints), axis=0).min() > 60
    real = np.asarray(Image.open(os.path.join(celeba, 'CelebA-HQ-img', '0.jpg')), np.float32)
    fake = np.asarray(Image.open(os.path.join(generated, 'sd_0000.png')), np.float32)
    r, _, b = _stroke_colour(real)
    assert r > b + 50   # "real": warm strokes
    r, _, b = _stroke_colour(fake)
    assert b > r + 50   # "generated": cool strokes
    assert fake.shape[:2] != real.shape[:2]


def test_tile_and_grid_tiles_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(7)]
    grid = demo.tile(images, cols=3)
    assert grid.shape == (3 * 4, 3 * 4, 3)
    assert not grid[8:, 4:].any()  # the two cells after the last image stay black
    Image.fromarray(grid).save(tmp_path / 'grid.png')
    back = demo.grid_tiles(str(tmp_path / 'grid.png'), 4, 7)
    assert all(np.array_equal(a, b) for a, b in zip(images, back))


def test_legible_tells_digits_from_noise_and_blobs():
    digits, labels = demo._digits()
    rng = np.random.default_rng(0)
    rendered = [np.asarray(demo._render(d, 16, [250, 160, 60], [30, 20, 60], rng, 4)) for d in digits[:40]]
    count, seen = demo.legible(rendered)
    assert count >= 36 and set(seen) == set(labels[:40].tolist())
    noise = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(40)]
    assert demo.legible(noise) == (0, [])
    # A blurred digit (what an early generator draws) is no longer near any real one.
    blobs = [np.asarray(Image.fromarray(img).resize((4, 4), Image.BOX).resize((16, 16), Image.BILINEAR))
             for img in rendered]
    assert demo.legible(blobs)[0] <= 8


def test_verdict_is_honest():
    assert 'learned something' in demo.verdict(20, 24, 24, 60, 10)
    partly = demo.verdict(4, 24, 24, 60, 10)
    assert partly.startswith('partly learned: it took on the mix') and 'only 4 of 24' in partly
    assert 'did not move' in demo.verdict(4, 24, 24, 60, 40)  # a colour claim only when the gap halved
    assert 'NOT legible' in demo.verdict(0, 24, 24, 60, 10)


def test_colour_gap_tells_the_mix_colours_from_others():
    digits, _ = demo._digits()
    rng = np.random.default_rng(0)
    def rendered(tint, background, n=20, offset=0):
        return [np.asarray(demo._render(d, 16, tint, background, rng, 2)) for d in digits[offset:offset + n]]
    warm, other_warm = rendered([240, 160, 60], [30, 25, 60]), rendered([240, 160, 60], [30, 25, 60], offset=20)
    cool = rendered([80, 180, 240], [90, 90, 90])
    assert demo.colour_gap(warm, warm) == 0
    assert demo.colour_gap(other_warm, warm) < 10 < demo.colour_gap(cool, warm)


def _fake_run(tmp_path):
    run = tmp_path / '00000-run'
    run.mkdir()
    schedule = schedulers.parse_lr_schedule('ddclr')
    (run / 'training_options.json').write_text(json.dumps(dict(lr_schedule=schedule, total_kimg=8)))
    lines = [dict(results={'fid50_full': v}, metric='fid50k_full', kimg=k, num_gen=50)
             for k, v in ((0.032, 180.5), (4, 120.0), (8, 95.25))]
    (run / 'metric-fid50k_full.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    return str(run)


def test_run_readers(tmp_path):
    run = _fake_run(tmp_path)
    kimg, lr, label = demo.lr_curve_of(run)
    assert label == 'DDCLR (ddclr)'
    assert kimg[0] == 0 and kimg[-1] == 8
    assert lr[0] == pytest.approx(0.0005) and lr[-1] == pytest.approx(0.0)
    assert lr.max() == pytest.approx(0.003 * 23 / 25)  # the first crest (docs/schedules.md)
    assert demo.fid_points(run) == [(0.032, 180.5), (4.0, 120.0), (8.0, 95.25)]


def test_picture_holds_every_panel_and_the_curve(tmp_path):
    run = _fake_run(tmp_path)
    kimg, lr, label = demo.lr_curve_of(run)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255)]
    panels = [(f'panel {i}', np.full((8, 12, 3), c, np.uint8)) for i, c in enumerate(colours)]
    out = tmp_path / 'demo.png'
    demo.compose_picture(panels, dict(kimg=kimg, lr=lr, label=label, fid=demo.fid_points(run)), str(out))
    picture = np.asarray(Image.open(out).convert('RGB')).astype(int)
    assert picture.shape[1] > picture.shape[0] * 3  # one row, side by side
    columns = []
    for colour in colours:
        hit = np.all(picture == colour, axis=2)
        assert hit.sum() > 1000, f'panel colour {colour} is missing'
        columns.append(np.nonzero(hit.any(axis=0))[0].mean())
    assert columns == sorted(columns)  # left to right, in the given order
    curve_blue = np.all(np.abs(picture - (31, 119, 180)) < 8, axis=2)  # matplotlib's tab:blue line
    assert np.nonzero(curve_blue.any(axis=0))[0].min() > max(columns)
    assert sorted(os.listdir(tmp_path)) == ['00000-run', 'demo.png']  # written atomically, no temp left


def test_a_background_step_that_fails_stops_the_demo_naming_its_log(tmp_path, capsys):
    log = open(tmp_path / 'commands.txt', 'w', encoding='utf-8')
    output = str(tmp_path / 'step.log')
    cmd = [sys.executable, '-c', 'import sys; print("boom"); sys.exit(3)']
    proc = demo.start(cmd, log, env=demo.one_thread(), output=output)
    with pytest.raises(SystemExit) as e:
        demo.wait(proc, cmd)
    log.close()
    assert 'exit 3' in str(e.value) and output in str(e.value)
    assert open(output, encoding='utf-8').read() == 'boom\n'  # the step's output went to its file
    assert 'boom' not in capsys.readouterr().out.splitlines()  # only the echoed command reached the console
    assert (tmp_path / 'commands.txt').read_text(encoding='utf-8').count('sys.exit(3)') == 1


def test_one_thread_leaves_the_rest_of_the_environment(monkeypatch):
    monkeypatch.setenv('DEMO_PROBE', 'kept')
    monkeypatch.setenv('OMP_NUM_THREADS', '7')
    env = demo.one_thread()
    assert env['OMP_NUM_THREADS'] == '1' and env['DEMO_PROBE'] == 'kept'
    assert os.environ['OMP_NUM_THREADS'] == '7'  # a copy: the demo's own process keeps its threads


def test_waiting_for_the_untrained_snapshot(tmp_path):
    pre_runs = tmp_path / 'pretrain'
    writer = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
        import os, time
        time.sleep(0.3)
        os.makedirs({str(pre_runs / '00000-run')!r})
        open({str(pre_runs / '00000-run' / 'network-snapshot-000000.pkl')!r}, 'wb').close()
        time.sleep(30)''')])
    try:
        found = demo._wait_for_untrained_snapshot(str(pre_runs), writer)
        assert found == str(pre_runs / '00000-run' / 'network-snapshot-000000.pkl')
    finally:
        writer.kill()
        writer.wait()
    # A pretraining that ends without a snapshot: no FID beside it, no hang.
    quitter = subprocess.Popen([sys.executable, '-c', 'pass'])
    assert demo._wait_for_untrained_snapshot(str(tmp_path / 'nothing'), quitter) is None


def test_fid_text():
    assert demo._fid_text([(0.032, 180.5), (4, 120.0)]) == ', FID 180'
    assert demo._fid_text([]) == ''


def test_a_failed_pretraining_stops_the_fid_run_beside_it(tmp_path, monkeypatch):
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    monkeypatch.setattr(demo, '_start_untrained_fid', lambda *args: (sleeper, ['the FID run']))
    real_start = demo.start
    failing = [sys.executable, '-c', 'import sys; sys.exit(2)']
    monkeypatch.setattr(demo, 'start', lambda cmd, log, env=None, output=None: real_start(failing, log))
    with open(tmp_path / 'commands.txt', 'w', encoding='utf-8') as log:
        with pytest.raises(SystemExit, match='exit 2'):
            demo.pretrain(str(tmp_path), str(tmp_path), log)
    try:
        assert sleeper.wait(timeout=60) != 0  # terminated, not left running behind the demo
    finally:
        sleeper.kill()


def test_lean_text_states_pull_and_memorisation_with_intervals(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    assert 'not measured' in demo.lean_text(str(run))
    pull = dict(results={'pull40_full_nn': 0.5, 'pull40_full_base': 0.2, 'pull40_full_fid_real': 90.0},
                uncertainty={'pull40_full_nn': {'ci95': [0.35, 0.65]}}, kimg=8, num_gen=40)
    memo = dict(results={'memo40_full': 0.05, 'memo40_full_nn_ratio': 1.2},
                uncertainty={'memo40_full': {'ci95': [-0.02, 0.12]}}, kimg=8, num_gen=40)
    (run / 'metric-pull50k_full.jsonl').write_text(json.dumps(dict(pull, results={**pull['results'], 'pull40_full_nn': 0.1}))
                                                   + '\n' + json.dumps(pull) + '\n')  # the last line counts
    (run / 'metric-memo50k_full.jsonl').write_text(json.dumps(memo) + '\n')
    text = demo.lean_text(str(run))
    assert '50% [95% 35-65%]' in text and '20% of the mix' in text and 'leans towards them' in text
    assert 'memorised' in text and '5% [95% 0-12%]' in text
    pull['uncertainty']['pull40_full_nn']['ci95'] = [0.1, 0.9]
    (run / 'metric-pull50k_full.jsonl').write_text(json.dumps(pull) + '\n')
    assert 'no clear lean' in demo.lean_text(str(run))
