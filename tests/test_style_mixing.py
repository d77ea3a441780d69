"""style_mixing.py: file names, grid size and layout, what a mix is, truncation, determinism (also with
random noise), grayscale networks, and one-line errors for bad input."""

import hashlib
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import style_mixing
from cli_helpers import failed_with_one_error_line as _one_line_error


def _tiny_G(img_channels=3, c_dim=0):
    networks = pytest.importorskip('training.networks')
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=32, img_channels=img_channels,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.5)   # trained networks use their noise; an untrained one would ignore --noise-mode
        G.mapping.w_avg.copy_(torch.randn(G.w_dim))
    return G.eval()


def _pickle(path, G):
    from patches.network_pickle import save_network_pkl
    save_network_pkl(os.fspath(path), dict(G=G, D=None, G_ema=G, augment_pipe=None, training_set_kwargs=None))
    return os.fspath(path)


@pytest.fixture
def tiny(tmp_path):
    G = _tiny_G()
    return _pickle(tmp_path / 'tiny.pkl', G), G


def _run(pkl, outdir, *args):
    return CliRunner().invoke(style_mixing.main, ['--network', pkl, '--outdir', os.fspath(outdir), '--device', 'cpu', *args])


def _img(path):
    return np.asarray(PIL.Image.open(path))


def _digests(folder):
    return {n: hashlib.sha256(open(os.path.join(folder, n), 'rb').read()).hexdigest() for n in sorted(os.listdir(folder))}



def test_files_grid_size_and_layout(tiny, tmp_path):
    pkl, G = tiny
    out = tmp_path / 'out'
    result = _run(pkl, out, '--rows', '85,100,75', '--cols', '55,821', '--styles', '0-3')
    assert result.exit_code == 0, result.output
    pairs = {f'{r}-{c}.png' for r in (85, 100, 75) for c in (55, 821)}
    singles = {f'{s}-{s}.png' for s in (85, 100, 75, 55, 821)}
    assert set(os.listdir(out)) == pairs | singles | {'grid.png'}
    grid = _img(out / 'grid.png')
    assert grid.shape == (32 * 4, 32 * 3, 3)                       # (rows + 1) x (cols + 1) cells
    cell = lambda r, c: grid[32 * r:32 * (r + 1), 32 * c:32 * (c + 1)]  # noqa: E731
    assert not cell(0, 0).any()                                    # black corner
    assert np.array_equal(cell(0, 2), _img(out / '821-821.png'))   # column seeds along the top
    assert np.array_equal(cell(3, 0), _img(out / '75-75.png'))     # row seeds down the left
    assert np.array_equal(cell(2, 1), _img(out / '100-55.png'))
    assert len({_img(out / name).tobytes() for name in pairs}) == len(pairs)


def test_a_mix_takes_the_listed_layers_from_the_column(tiny):
    _, G = tiny
    last = G.num_ws - 1
    every = style_mixing.style_mixing_images(G, [1], [2], list(range(G.num_ws)), device='cpu')
    assert every[(1, 2)].tobytes() == every[(2, 2)].tobytes()       # all layers from the column: the column
    fine = style_mixing.style_mixing_images(G, [1], [2], [last], device='cpu')
    a, b, c = (np.asarray(fine[k], dtype=np.int32) for k in ((1, 1), (1, 2), (2, 2)))
    # Only the last (finest) layer swapped: much closer to the row image than to the column image.
    assert np.abs(b - a).mean() < np.abs(b - c).mean() and not np.array_equal(a, b)


def test_truncation_zero_renders_the_average_for_every_seed(tiny):
    _, G = tiny
    images = style_mixing.style_mixing_images(G, [1, 2], [3], [0, 1], truncation_psi=0, device='cpu')
    assert len({img.tobytes() for img in images.values()}) == 1
    images = style_mixing.style_mixing_images(G, [1, 2], [3], [0, 1], truncation_psi=1, device='cpu')
    assert len({img.tobytes() for img in images.values()}) == len(images)


@pytest.mark.parametrize('noise_mode', ['const', 'random'])
def test_same_command_twice_same_bytes(tiny, tmp_path, noise_mode):
    pkl, _ = tiny
    args = ('--rows', '1-2', '--cols', '7', '--styles', '0-6', '--noise-mode', noise_mode)
    for name in ('a', 'b'):
        assert _run(pkl, tmp_path / name, *args).exit_code == 0
    assert _digests(tmp_path / 'a') == _digests(tmp_path / 'b')
    # An image depends on its pair only, not on the grid it is part of.
    assert _run(pkl, tmp_path / 'c', '--rows', '2', '--cols', '7,8', '--noise-mode', noise_mode).exit_code == 0
    assert _digests(tmp_path / 'c')['2-7.png'] == _digests(tmp_path / 'a')['2-7.png']


def test_random_noise_differs_from_const(tiny, tmp_path):
    pkl, _ = tiny
    assert _run(pkl, tmp_path / 'c', '--rows', '1', '--cols', '2').exit_code == 0
    assert _run(pkl, tmp_path / 'r', '--rows', '1', '--cols', '2', '--noise-mode', 'random').exit_code == 0
    assert _digests(tmp_path / 'c')['1-2.png'] != _digests(tmp_path / 'r')['1-2.png']


def test_grayscale_network(tmp_path):
    pkl = _pickle(tmp_path / 'gray.pkl', _tiny_G(img_channels=1))
    assert _run(pkl, tmp_path / 'o', '--rows', '1', '--cols', '2').exit_code == 0
    grid = PIL.Image.open(tmp_path / 'o' / 'grid.png')
    assert grid.mode == 'L' and grid.size == (64, 64)


def test_bad_input_is_one_line(tiny, tmp_path):
    pkl, G = tiny
    out = tmp_path / 'out'
    _one_line_error(_run(pkl, out, '--rows', '1', '--cols', '2', '--styles', f'0-{G.num_ws}'),
                    '--styles', f'{G.num_ws} W layers')
    _one_line_error(_run(os.fspath(tmp_path / 'absent.pkl'), out, '--rows', '1', '--cols', '2'), '--network')
    _one_line_error(_run(_pickle(tmp_path / 'cond.pkl', _tiny_G(c_dim=3)), out, '--rows', '1', '--cols', '2'),
                    '--network', 'conditional')
    (tmp_path / 'file').write_text('x')
    _one_line_error(_run(pkl, tmp_path / 'file' / 'sub', '--rows', '1', '--cols', '2'), '--outdir')
    assert not out.exists()
    for flag, value in (('--rows', '3-1'), ('--cols', 'x'), ('--styles', '')):
        args = {'--rows': '1', '--cols': '2', '--styles': '0-1', flag: value}
        result = _run(pkl, out, *[a for kv in args.items() for a in kv])
        assert result.exit_code == 2 and flag in result.output, result.output
    assert not out.exists()


@pytest.mark.gpu
def test_cuda_matches_cpu_within_a_grey_level(tiny, tmp_path):
    pkl, _ = tiny
    for device in ('cpu', 'cuda'):
        result = CliRunner().invoke(style_mixing.main, ['--network', pkl, '--rows', '1-2', '--cols', '3',
                                                        '--device', device, '--outdir', os.fspath(tmp_path / device)])
        assert result.exit_code == 0, result.output
    for name in os.listdir(tmp_path / 'cpu'):
        diff = np.abs(_img(tmp_path / 'cpu' / name).astype(int) - _img(tmp_path / 'cuda' / name).astype(int))
        assert diff.max() <= 2, name
