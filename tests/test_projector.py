"""projector.py: the schedule and regulariser in closed form, target preparation, a real projection of a
tiny network's own image (it must get closer than the starting w_avg image), byte-identical reruns, the
projected_w.npz round trip into generate.py, the optional video, and one-line errors for bad input."""

import hashlib
import math
import os
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
import projector
from vgg16_standin import install_standin
from cli_helpers import failed_with_one_error_line as _one_line_error

STEPS = 40


@pytest.fixture
def standin(tmp_path, monkeypatch):
    return install_standin(tmp_path / 'cache', monkeypatch)


def _tiny_G():
    networks = pytest.importorskip('training.networks')
    torch.manual_seed(0)
    return networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None))


def _save(path, **snapshot):
    from patches.network_pickle import save_network_pkl
    save_network_pkl(os.fspath(path), dict(dict(G=None, D=None, G_ema=None, augment_pipe=None,
                                                training_set_kwargs=None), **snapshot))
    return os.fspath(path)


@pytest.fixture
def tiny(tmp_path):
    """(pickle path, G, w_true [1, num_ws, w_dim], target path): the target is G's image of a known w."""
    G = _tiny_G().eval()
    pkl = _save(tmp_path / 'tiny.pkl', G=G, G_ema=G)
    with torch.no_grad():
        z = torch.from_numpy(np.random.RandomState(5).randn(1, G.z_dim)).float()
        w_true = G.mapping(z, None)
    target = tmp_path / 'target_in.png'
    PIL.Image.fromarray(projector.synthesize_uint8(G, w_true, torch.device('cpu'))).save(target)
    return pkl, G, w_true, os.fspath(target)


def _run(*args):
    return CliRunner().invoke(projector.main, [*args, '--device', 'cpu'])


def _digests(folder):
    return {n: hashlib.sha256(open(os.path.join(folder, n), 'rb').read()).hexdigest() for n in sorted(os.listdir(folder))}


def _pixels(path):
    return np.asarray(PIL.Image.open(path), dtype=np.float64)


# ----------------------------------------------------------------------------
# Pure pieces.


def test_learning_rate_and_w_noise_schedules():
    lr = lambda step: projector.learning_rate(step, 100)  # noqa: E731
    assert lr(0) == 0                                        # warm-up starts from zero
    assert lr(1) == pytest.approx(0.1 * 0.01 / 0.05)         # linear over the first 5%
    assert lr(5) == pytest.approx(0.1) and lr(50) == pytest.approx(0.1) and lr(75) == pytest.approx(0.1)
    assert lr(87.5) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(math.pi * 0.5)))   # cosine over the last 25%
    assert lr(100) == pytest.approx(0)
    noise = lambda step: projector.w_noise_scale(step, 100, w_std=2.0)  # noqa: E731
    assert noise(0) == pytest.approx(0.1) and noise(37.5) == pytest.approx(0.1 * 0.25)
    assert noise(75) == 0 and noise(99) == 0


def test_noise_regularization_closed_form():
    ones = torch.ones(16, 16)                     # autocorrelation 1 at scales 16 and 8 (pooling stops at 8)
    assert float(projector.noise_regularization([ones])) == pytest.approx(4.0)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1
    assert float(projector.noise_regularization([checker])) == pytest.approx(2.0)  # -1 at 16 px, pools to 0
    assert float(projector.noise_regularization([ones[:4, :4], ones])) == pytest.approx(6.0)
    white = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    assert float(projector.noise_regularization([white])) < 1e-2


def test_normalize_noise_in_place():
    buf = torch.rand(8, 8) * 5 + 3
    projector.normalize_noise_([buf])
    assert abs(float(buf.mean())) < 1e-6 and float(buf.square().mean()) == pytest.approx(1.0, abs=1e-5)


def test_wrong_size_target_is_centre_cropped_and_resized(tmp_path):
    wide = np.zeros((40, 70, 3), np.uint8)
    wide[:, 15:55] = 200                                  # the centre 40x40 square is uniform
    wide[:, :15], wide[:, 55:] = (255, 0, 0), (0, 0, 255)
    PIL.Image.fromarray(wide).save(tmp_path / 'wide.png')
    img = projector.prepare_target(projector.read_image(os.fspath(tmp_path / 'wide.png')), 32)
    assert img.size == (32, 32) and img.mode == 'RGB'
    assert np.array_equal(np.asarray(img), np.full((32, 32, 3), 200, np.uint8))
    tall = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8))
    want = tall.crop((0, 10, 30, 40)).resize((16, 16), PIL.Image.LANCZOS).convert('L')
    got = projector.prepare_target(tall, 16, channels=1)
    assert got.mode == 'L' and got.tobytes() == want.tobytes()

def test_lpips_input_area_downsamples_only_above_256():
    x = torch.rand(1, 3, 512, 512) * 255
    torch.testing.assert_close(projector.lpips_input(x), torch.nn.functional.avg_pool2d(x, 2))
    small = torch.rand(1, 3, 256, 256)
    assert projector.lpips_input(small) is small

# ----------------------------------------------------------------------------
# A real projection.


def test_projection_gets_closer_than_w_avg(tiny, standin, tmp_path):
    pkl, G, w_true, target = tiny
    result = _run('--network', pkl, '--target', target, '--num-steps', str(STEPS), '--save-video', 'false',
                  '--outdir', os.fspath(tmp_path / 'out'))
    assert result.exit_code == 0, result.output
    out = tmp_path / 'out'
    assert sorted(os.listdir(out)) == ['proj.png', 'projected_w.npz', 'target.png']
    assert oct(os.stat(out / 'proj.png').st_mode & 0o777) == oct(0o666 & ~_umask())
    with np.load(out / 'projected_w.npz') as data:
        assert list(data.keys()) == ['w']
        w = data['w']
    assert w.dtype == np.float32 and w.shape == (1, G.num_ws, G.w_dim)
    assert np.array_equal(w[0], np.repeat(w[0, :1], G.num_ws, axis=0))   # one w broadcast to all layers

    w_avg, _ = projector.w_statistics(G, 10000, torch.device('cpu'))
    start = projector.synthesize_uint8(G, w_avg.repeat(1, G.num_ws, 1), torch.device('cpu')).astype(np.float64)
    goal = _pixels(target)
    assert np.array_equal(_pixels(out / 'target.png'), goal)           # already the right size: unchanged
    err_start = np.square(start - goal).mean()
    err_proj = np.square(_pixels(out / 'proj.png') - goal).mean()
    assert err_proj < 0.5 * err_start, (err_proj, err_start)
    # Closer in W as well, not only in pixels.
    assert np.linalg.norm(w[0, 0] - w_true[0, 0].numpy()) < np.linalg.norm(w_avg[0, 0].numpy() - w_true[0, 0].numpy())


def test_same_command_twice_gives_same_bytes_and_seed_matters(tiny, standin, tmp_path):
    pkl, _, _, target = tiny
    runs = {}
    for name, seed in (('a', '1'), ('b', '1'), ('c', '2')):
        result = _run('--network', pkl, '--target', target, '--num-steps', '10', '--seed', seed,
                      '--save-video', 'false', '--outdir', os.fspath(tmp_path / name))
        assert result.exit_code == 0, result.output
        runs[name] = _digests(tmp_path / name)
    assert runs['a'] == runs['b']
    assert runs['a']['projected_w.npz'] != runs['c']['projected_w.npz']


def test_projected_w_round_trip_into_generate(tiny, standin, tmp_path):
    pkl, G, _, target = tiny
    assert _run('--network', pkl, '--target', target, '--num-steps', '10', '--save-video', 'false',
                '--outdir', os.fspath(tmp_path / 'p')).exit_code == 0
    result = CliRunner().invoke(generate.main, ['--network', pkl, '--projected-w', os.fspath(tmp_path / 'p' / 'projected_w.npz'),
                                                '--device', 'cpu', '--outdir', os.fspath(tmp_path / 'g')])
    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path / 'g') == ['proj00.png']
    with np.load(tmp_path / 'p' / 'projected_w.npz') as data:
        w = torch.from_numpy(data['w'])
    with torch.no_grad():
        img = G.synthesis(w, noise_mode='const', force_fp32=True)
    want = (img[0].permute(1, 2, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    got = _pixels(tmp_path / 'g' / 'proj00.png')
    assert np.array_equal(got, want)
    # proj.png is the same image with the projector's (x + 1) * 127.5 flooring: at most one level apart.
    assert np.abs(got - _pixels(tmp_path / 'p' / 'proj.png')).max() <= 1


def test_project_function_returns_every_step(tiny, standin):
    _, G, _, target = tiny
    pixels = torch.from_numpy(_pixels(target).astype(np.uint8).transpose(2, 0, 1).copy())
    w_steps = projector.project(G, pixels, num_steps=5, w_avg_samples=100, device='cpu')
    assert w_steps.shape == (5, G.num_ws, G.w_dim) and w_steps.dtype == torch.float32
    assert not torch.equal(w_steps[0], w_steps[-1])
    for name, buf in G.synthesis.named_buffers():   # the caller's network is left alone
        assert not buf.requires_grad, name

def test_grayscale_network_projects_to_L_images(standin, tmp_path):
    networks = pytest.importorskip('training.networks')
    torch.manual_seed(1)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=1, mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0, conv_clamp=None))
    pkl = _save(tmp_path / 'gray.pkl', G=G, G_ema=G)
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / 't.png')
    result = _run('--network', pkl, '--target', os.fspath(tmp_path / 't.png'), '--num-steps', '3', '--save-video', 'false',
                  '--outdir', os.fspath(tmp_path / 'o'))
    assert result.exit_code == 0, result.output
    for name in ('target.png', 'proj.png'):
        img = PIL.Image.open(tmp_path / 'o' / name)
        assert img.mode == 'L' and img.size == (16, 16)

# ----------------------------------------------------------------------------
# Video.


class _FakeWriter:
    def __init__(self, path, frames):
        self.path, self.frames = path, frames

    def append_data(self, frame):
        self.frames.append(np.array(frame))

    def close(self):
        with open(self.path, 'wb') as f:
            f.write(b'fake mp4')


def test_video_frames_are_target_beside_projection(tiny, standin, tmp_path, monkeypatch):
    pkl, _, _, target = tiny
    frames, calls = [], []
    fake = types.SimpleNamespace(get_writer=lambda path, **kw: calls.append(kw) or _FakeWriter(path, frames))
    monkeypatch.setattr(projector, 'video_writer_module', lambda: fake)
    result = _run('--network', pkl, '--target', target, '--num-steps', '6', '--outdir', os.fspath(tmp_path / 'v'))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / 'v')) == ['proj.mp4', 'proj.png', 'projected_w.npz', 'target.png']
    assert calls == [dict(mode='I', fps=10, codec='libx264', bitrate='16M')]
    assert len(frames) == 6 and all(f.shape == (32, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert np.array_equal(frames[0][:, :32], _pixels(target).astype(np.uint8))
    assert np.array_equal(frames[-1][:, 32:], _pixels(tmp_path / 'v' / 'proj.png').astype(np.uint8))


def test_without_a_video_writer_says_so_and_writes_the_rest(tiny, standin, tmp_path, monkeypatch):
    pkl, _, _, target = tiny
    monkeypatch.setitem(sys.modules, 'imageio', None)       # import fails, as when it is not installed
    assert projector.video_writer_module() is None
    result = _run('--network', pkl, '--target', target, '--num-steps', '2', '--outdir', os.fspath(tmp_path / 'v'))
    assert result.exit_code == 0, result.output
    assert 'proj.mp4 will not be written' in result.output and 'imageio' in result.output
    assert sorted(os.listdir(tmp_path / 'v')) == ['proj.png', 'projected_w.npz', 'target.png']

# ----------------------------------------------------------------------------
# Bad input.


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_target_network_and_outdir_are_one_line_errors(tiny, standin, tmp_path):
    pkl, G, _, target = tiny
    out = tmp_path / 'out'
    _one_line_error(_run('--network', pkl, '--target', os.fspath(tmp_path / 'absent.png'), '--outdir', os.fspath(out)),
                    '--target', 'absent.png')
    (tmp_path / 'notes.png').write_text('not an image')
    _one_line_error(_run('--network', pkl, '--target', os.fspath(tmp_path / 'notes.png'), '--outdir', os.fspath(out)),
                    '--target', 'notes.png')
    _one_line_error(_run('--network', pkl, '--target', os.fspath(tmp_path), '--outdir', os.fspath(out)), '--target')
    _one_line_error(_run('--network', os.fspath(tmp_path / 'absent.pkl'), '--target', target, '--outdir', os.fspath(out)),
                    '--network', 'absent.pkl')
    d_only = _save(tmp_path / 'd_only.pkl', G=G)
    _one_line_error(_run('--network', d_only, '--target', target, '--outdir', os.fspath(out)), '--network', 'G_ema')
    no_mapping = _save(tmp_path / 'synthesis_only.pkl', G_ema=G.synthesis)
    _one_line_error(_run('--network', no_mapping, '--target', target, '--outdir', os.fspath(out)),
                    '--network', 'mapping network')
    (tmp_path / 'file').write_text('x')
    _one_line_error(_run('--network', pkl, '--target', target, '--outdir', os.fspath(tmp_path / 'file' / 'sub')),
                    '--outdir')
    assert not out.exists()                                   # nothing created by a failed run
    result = _run('--network', pkl, '--target', target, '--outdir', os.fspath(tmp_path / 'file'))
    assert result.exit_code != 0 and (tmp_path / 'file').read_text() == 'x'


def test_missing_vgg16_is_one_line_saying_where_to_put_it(tiny, tmp_path, monkeypatch):
    from vgg16_standin import block_downloads
    from dnnlib import util
    from metrics import vgg16
    pkl, _, _, target = tiny
    monkeypatch.setattr(util, '_cache_dir_override', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', os.fspath(tmp_path / 'empty-cache'))
    block_downloads(monkeypatch)
    result = _run('--network', pkl, '--target', target, '--outdir', os.fspath(tmp_path / 'out'))
    _one_line_error(result, 'vgg16.pt', vgg16.vgg16_cache_path())
    assert not (tmp_path / 'out').exists()


@pytest.mark.gpu
def test_projection_on_cuda_gets_closer(tiny, standin, tmp_path):
    pkl, G, _, target = tiny
    result = CliRunner().invoke(projector.main, ['--network', pkl, '--target', target, '--num-steps', str(STEPS),
                                                 '--save-video', 'false', '--device', 'cuda',
                                                 '--outdir', os.fspath(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    w_avg, _ = projector.w_statistics(G, 10000, torch.device('cpu'))
    start = projector.synthesize_uint8(G, w_avg.repeat(1, G.num_ws, 1), torch.device('cpu')).astype(np.float64)
    goal = _pixels(target)
    assert np.square(_pixels(tmp_path / 'out' / 'proj.png') - goal).mean() < 0.5 * np.square(start - goal).mean()
