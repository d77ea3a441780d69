"""The metrics' generator batch: sized from G's real layer sizes, and free to be below the detector batch."""

import pytest
import torch

from metrics import metric_utils
from torch_utils import op_trace
from test_fid_pipeline import _features_detector, _generator, _opts


def _call_sizes(G):
    sizes = []
    G.register_forward_pre_hook(lambda _module, args, kwargs: sizes.append(int(kwargs['z'].shape[0])),
                                with_kwargs=True)
    return sizes


def test_generator_calls_below_the_detector_batch_give_the_same_statistics(tmp_path):
    G = _generator()
    det = _features_detector('cpu')
    opts = _opts(tmp_path, G, 'cpu', seed=3, batch_size=4)
    runs = {}
    for bg in (4, 2, 1):
        sizes = _call_sizes(G)
        runs[bg] = metric_utils.compute_feature_stats_for_generator(opts, det, max_items=10, batch_gen=bg,
                                                                    capture_all=True, capture_mean_cov=True)
        G._forward_pre_hooks.clear()
        assert max(sizes) == bg and sum(sizes) == 10, sizes
    for bg in (2, 1):  # the same images in the same order: bit-identical features
        assert torch.equal(runs[bg].get_all_torch(), runs[4].get_all_torch())


def _cost(launch_numel, peak_bytes):
    cost = metric_utils.GeneratorCallCost.__new__(metric_utils.GeneratorCallCost)
    cost.launch_numel, cost.peak_bytes = launch_numel, peak_bytes
    return cost


def test_max_batch_respects_every_launch_and_the_memory():
    cost = _cost([(0, 10), (5, 100)], (1000, 50))
    assert cost.max_batch(max_numel=1005, max_bytes=10 ** 9) == 10      # 5 + 100 * 10 <= 1005
    assert cost.max_batch(max_numel=10 ** 9, max_bytes=1000 + 50 * 7) == 7
    assert cost.max_batch(max_numel=4, max_bytes=10 ** 9) == 0


@pytest.mark.parametrize('fits,expected', [(1000, 960), (200, 192), (63, 32), (40, 32), (5, 4), (0, 1)])
def test_choose_batch_gen_rounds_to_multiples_or_divisors_of_the_detector_batch(fits, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (2 ** 40, 2 ** 40))
    monkeypatch.setattr(metric_utils.GeneratorCallCost, '__init__', lambda self, G, G_kwargs=None: None)
    monkeypatch.setattr(metric_utils.GeneratorCallCost, 'max_batch', lambda self, n, b: fits)
    G = type('G', (), dict(img_resolution=64))()
    assert metric_utils.choose_batch_gen(G, 'cuda', 64) == expected


def test_generator_cost_is_measured_from_the_network():
    """Twice the channels: about twice the elements per launch and twice the memory per image."""
    small = metric_utils.GeneratorCallCost(_generator())
    networks = pytest.importorskip('training.networks')
    wide = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=None))
    wide = metric_utils.GeneratorCallCost(wide)
    per_image = lambda cost: max(b for _a, b in cost.launch_numel)  # noqa: E731
    assert 1.6 < per_image(wide) / per_image(small) <= 2.1
    assert wide.peak_bytes[1] > 1.5 * small.peak_bytes[1]  # (modulated weights grow with channels squared)
    assert op_trace.active is None  # the trace is closed again


def test_the_cost_is_measured_once_per_architecture(monkeypatch):
    traces = []
    trace = metric_utils.GeneratorCallCost._trace
    monkeypatch.setattr(metric_utils.GeneratorCallCost, '_trace',
                        staticmethod(lambda *args: traces.append(1) or trace(*args)))
    monkeypatch.setattr(metric_utils, '_call_costs', {})
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (2 ** 34, 2 ** 34))
    first = metric_utils.choose_batch_gen(_generator(), 'cuda', 4)
    assert metric_utils.choose_batch_gen(_generator(), 'cuda', 4) == first and len(traces) == 2
    metric_utils.choose_batch_gen(_generator(), 'cuda', 4, dict(noise_mode='const'))  # other G_kwargs
    assert len(traces) == 4
