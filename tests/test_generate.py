"""generate.py: seed parsing, pixel conversion, grid layout, batch independence, CLI errors, real pickles."""

import hashlib
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate


class FakeG(torch.nn.Module):
    """A stand-in generator: the image is an elementwise function of z (no batch-mixing ops), so the
    batch-independence checks below test generate.py, not floating-point GEMM rounding."""

    def __init__(self, img_channels=3, res=4, c_dim=0):
        super().__init__()
        self.img_channels, self.img_resolution, self.c_dim = img_channels, res, c_dim
        self.z_dim = img_channels * res * res
        self.w_dim, self.num_ws = self.z_dim, 2
        self.scale = torch.nn.Parameter(torch.tensor(0.7))
        self.calls = []

    def forward(self, z, c, truncation_psi=1, noise_mode='const', force_fp32=False):
        self.calls.append(dict(batch=len(z), c=c.clone(), psi=truncation_psi, noise_mode=noise_mode))
        img = torch.tanh(z * self.scale) * truncation_psi
        if noise_mode == 'random':
            img = img + 0.2 * torch.randn_like(img)
        return img.reshape(len(z), self.img_channels, self.img_resolution, self.img_resolution)

    def synthesis(self, ws, noise_mode='const', force_fp32=False):
        return torch.tanh(ws[:, 0, :]).reshape(len(ws), self.img_channels, self.img_resolution, self.img_resolution)


def png_bytes(img):
    import io
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()

# ----------------------------------------------------------------------------
# Helpers.


def test_parse_seeds():
    assert generate.parse_seeds('1,3-5') == [1, 3, 4, 5]
    assert generate.parse_seeds('0-3') == [0, 1, 2, 3]
    assert generate.parse_seeds('7, 2,7') == [7, 2]  # order kept, duplicate dropped
    for bad in ('5-3', '', 'a', '1,,2', '-1', f'{2**32}'):
        with pytest.raises(ValueError):
            generate.parse_seeds(bad)


def test_pixel_conversion_matches_upstream_formula():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 0.999, 1.0, 2.0])
    expected = [0, 0, 64, 128, 166, 255, 255, 255]  # trunc(clamp(x*127.5+128, 0, 255)); 0.3 -> 166.25 -> 166
    rgb = generate.to_pil(x.reshape(1, 1, 1, 8).repeat(1, 3, 1, 1))[0]
    assert rgb.mode == 'RGB' and list(np.asarray(rgb)[0, :, 1]) == expected
    gray = generate.to_pil(x.reshape(1, 1, 1, 8))[0]
    assert gray.mode == 'L' and list(np.asarray(gray)[0]) == expected
    with pytest.raises(ValueError, match='channels'):
        generate.to_pil(torch.zeros(1, 2, 4, 4))


def test_seed_latents_are_per_seed():
    z = generate.seed_latents([5, 9], 16)
    assert z.dtype == torch.float32 and z.shape == (2, 16)
    assert torch.equal(z[1], torch.from_numpy(np.random.RandomState(9).randn(16).astype(np.float32)))


def test_grid_layout():
    colours = [(10 * i, 0, 0) for i in range(1, 6)]
    tiles = [PIL.Image.new('RGB', (4, 3), c) for c in colours]
    grid = np.asarray(generate.make_grid(tiles))  # 5 images -> 3 per row, 2 rows
    assert grid.shape == (6, 12, 3)
    for i, c in enumerate(colours):
        r, col = divmod(i, 3)
        assert tuple(grid[r * 3 + 1, col * 4 + 2]) == c
    assert tuple(grid[4, 10]) == (0, 0, 0)  # the empty sixth cell
    assert np.asarray(generate.make_grid(tiles, cols=5)).shape == (3, 20, 3)

# ----------------------------------------------------------------------------
# generate_images with a stand-in generator.


@pytest.mark.parametrize('noise_mode', ['const', 'random'])
def test_output_does_not_depend_on_batch_size(noise_mode):
    G = FakeG()
    seeds = [0, 1, 2, 3, 10, 11, 12]
    a = [(s, png_bytes(img)) for s, img in generate.generate_images(G, seeds, batch_size=1, noise_mode=noise_mode)]
    b = [(s, png_bytes(img)) for s, img in generate.generate_images(G, seeds, batch_size=4, noise_mode=noise_mode)]
    assert a == b
    assert [s for s, _ in a] == seeds
    assert len({data for _, data in a}) == len(seeds)  # different seeds give different images


def test_random_noise_is_seeded_and_leaves_global_rng_alone():
    G = FakeG()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = [png_bytes(i) for _, i in generate.generate_images(G, [4], noise_mode='random')]
    assert torch.equal(torch.get_rng_state(), before)
    second = [png_bytes(i) for _, i in generate.generate_images(G, [4], noise_mode='random')]
    const = [png_bytes(i) for _, i in generate.generate_images(G, [4], noise_mode='const')]
    assert first == second and first != const


def test_truncation_and_labels_reach_the_generator():
    G = FakeG(c_dim=3)
    list(generate.generate_images(G, [1, 2], truncation_psi=0.5, class_idx=2, batch_size=2))
    call = G.calls[-1]
    assert call['psi'] == 0.5 and torch.equal(call['c'], torch.tensor([[0., 0., 1.], [0., 0., 1.]]))
    with pytest.raises(ValueError, match='conditional'):
        list(generate.generate_images(G, [1]))
    with pytest.raises(ValueError, match='out of range'):
        list(generate.generate_images(G, [1], class_idx=3))
    with pytest.warns(UserWarning, match='ignored'):
        list(generate.generate_images(FakeG(), [1], class_idx=0))


def test_grayscale_generator_gives_L_images():
    _, img = next(generate.generate_images(FakeG(img_channels=1), [0]))
    assert img.mode == 'L' and img.size == (4, 4)

# ----------------------------------------------------------------------------
# CLI with a stand-in generator.


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """Run the CLI with load_generator returning a FakeG; --network must still name an existing file."""
    net = tmp_path / 'net.pkl'
    net.write_bytes(b'not read')
    holder = {'G': FakeG()}
    monkeypatch.setattr(generate, 'load_generator', lambda network, device: holder['G'])

    def invoke(*args):
        return CliRunner().invoke(generate.main, ['--network', str(net), '--device', 'cpu', *args])
    return invoke, holder, tmp_path


def test_cli_writes_named_files_and_grid(fake_cli):
    invoke, _, tmp = fake_cli
    out = tmp / 'out'
    result = invoke('--seeds', '1,3-4', '--outdir', str(out), '--grid', 'also', '--batch-size', '2')
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ['grid.png', 'seed0001.png', 'seed0003.png', 'seed0004.png']
    direct = dict(generate.generate_images(FakeG(), [1, 3, 4]))
    assert PIL.Image.open(out / 'seed0003.png').tobytes() == direct[3].tobytes()
    grid = PIL.Image.open(out / 'grid.png')
    assert grid.size == (8, 8)  # 3 images of 4x4 -> 2 per row, 2 rows
    assert grid.crop((4, 0, 8, 4)).tobytes() == direct[3].tobytes()

    only = tmp / 'only'
    assert invoke('--seeds', '0-1', '--outdir', str(only), '--grid', 'only').exit_code == 0
    assert os.listdir(only) == ['grid.png']


def test_cli_errors_and_warnings(fake_cli):
    invoke, holder, tmp = fake_cli
    out = str(tmp / 'o')
    result = invoke('--outdir', out)
    assert result.exit_code != 0 and '--seeds is required' in result.output
    result = invoke('--seeds', '3-1', '--outdir', out)
    assert result.exit_code != 0 and 'backwards' in result.output
    result = CliRunner().invoke(generate.main, ['--network', str(tmp / 'absent.pkl'), '--seeds', '1', '--outdir', out])
    assert result.exit_code != 0 and 'no such file' in result.output and '--network' in result.output

    holder['G'] = FakeG(c_dim=4)
    result = invoke('--seeds', '1', '--outdir', out)
    assert result.exit_code != 0 and '--class' in result.output and 'c_dim=4' in result.output
    assert invoke('--seeds', '1', '--outdir', out, '--class', '3').exit_code == 0

    holder['G'] = FakeG()
    result = invoke('--seeds', '1', '--outdir', out, '--class', '1')
    assert result.exit_code == 0 and 'warning: --class is ignored' in result.output


def test_cli_projected_w(fake_cli):
    invoke, holder, tmp = fake_cli
    G = holder['G']
    ws = np.random.RandomState(0).randn(3, G.num_ws, G.w_dim).astype(np.float32)
    np.savez(tmp / 'w.npz', w=ws)
    result = invoke('--projected-w', str(tmp / 'w.npz'), '--seeds', '1', '--outdir', str(tmp / 'p'))
    assert result.exit_code == 0, result.output
    assert 'seeds is ignored' in result.output
    assert sorted(os.listdir(tmp / 'p')) == ['proj00.png', 'proj01.png', 'proj02.png']
    np.savez(tmp / 'bad.npz', w=ws[:, :1])
    result = invoke('--projected-w', str(tmp / 'bad.npz'), '--outdir', str(tmp / 'p2'))
    assert result.exit_code != 0 and '--projected-w' in result.output and 'needs [K, 2, 48]' in result.output

# ----------------------------------------------------------------------------
# A real (tiny) Generator saved with save_network_pkl.


def _tiny_pickle(path, c_dim=0, img_channels=3):
    networks = pytest.importorskip('training.networks')
    network_pickle = pytest.importorskip('patches.network_pickle')
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=32, img_channels=img_channels,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0))
    network_pickle.save_network_pkl(str(path), dict(G=G, D=None, G_ema=G, augment_pipe=None,
                                                    training_set_kwargs=None))
    return str(path)


def _digests(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), 'rb').read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_real_pickle_deterministic_and_batch_independent(tmp_path):
    pkl = _tiny_pickle(tmp_path / 'tiny.pkl')
    runs = {}
    for name, batch in (('a', 1), ('b', 1), ('c', 4)):
        result = CliRunner().invoke(generate.main, ['--network', pkl, '--seeds', '0-2,7,9', '--device', 'cpu',
                                                    '--batch-size', str(batch), '--outdir', str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs[name] = _digests(tmp_path / name)
    assert list(runs['a']) == ['seed0000.png', 'seed0001.png', 'seed0002.png', 'seed0007.png', 'seed0009.png']
    assert runs['a'] == runs['b']  # same seeds -> identical bytes
    assert runs['a'] == runs['c']  # batch size 1 vs 4 -> identical bytes
    assert len(set(runs['a'].values())) == 5
    img = PIL.Image.open(tmp_path / 'a' / 'seed0007.png')
    assert img.mode == 'RGB' and img.size == (32, 32)


def test_real_pickle_matches_direct_generator_call(tmp_path):
    """The saved image equals the upstream recipe applied to G_ema by hand (z from RandomState(seed))."""
    pkl = _tiny_pickle(tmp_path / 'tiny.pkl')
    from patches.network_pickle import load_network_pkl
    G = load_network_pkl(pkl)['G_ema'].eval()
    z = torch.from_numpy(np.random.RandomState(7).randn(1, G.z_dim))
    with torch.no_grad():
        img = G(z.float(), torch.zeros([1, 0]), truncation_psi=1, noise_mode='const', force_fp32=True)
    want = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
    result = CliRunner().invoke(generate.main, ['--network', pkl, '--seeds', '7', '--device', 'cpu',
                                                '--outdir', str(tmp_path / 'o')])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'o' / 'seed0007.png')), want)


def test_real_grayscale_pickle(tmp_path):
    pkl = _tiny_pickle(tmp_path / 'gray.pkl', img_channels=1)
    result = CliRunner().invoke(generate.main, ['--network', pkl, '--seeds', '1', '--device', 'cpu',
                                                '--outdir', str(tmp_path / 'o')])
    assert result.exit_code == 0, result.output
    assert PIL.Image.open(tmp_path / 'o' / 'seed0001.png').mode == 'L'


@pytest.mark.gpu
def test_real_pickle_on_cuda_close_to_cpu(tmp_path):
    """CUDA output (fp32 here: num_fp16_res=0) matches CPU to within one grey level."""
    pkl = _tiny_pickle(tmp_path / 'tiny.pkl')
    for device in ('cpu', 'cuda'):
        result = CliRunner().invoke(generate.main, ['--network', pkl, '--seeds', '0-3', '--device', device,
                                                    '--outdir', str(tmp_path / device)])
        assert result.exit_code == 0, result.output
    for name in os.listdir(tmp_path / 'cpu'):
        a = np.asarray(PIL.Image.open(tmp_path / 'cpu' / name)).astype(int)
        b = np.asarray(PIL.Image.open(tmp_path / 'cuda' / name)).astype(int)
        assert np.abs(a - b).max() <= 1
