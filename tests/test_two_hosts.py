"""Training across two hosts: two network namespaces joined by a veth pair, torchrun with c10d
rendezvous, gloo on the CPU.

Each namespace is a host with its own network stack and address; they share the file system, as
cluster nodes share a network file system.
"""

import os
import subprocess
import sys

import pytest
import torch

from service_helpers import need_root_and, unavailable
from training_helpers import list_files, read_jsonl, write_image_zip

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
SUBNET = '10.231.7'
PORT = 29431


def _ip(*args):
    return subprocess.run(['ip', *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_hosts():
    """[(namespace, address, interface)] of two namespaces joined by a veth pair; removed afterwards."""
    need_root_and('ip')
    tag = f'{os.getpid() % 100000}'
    hosts = [(f'sg-host{i}-{tag}', f'{SUBNET}.{i + 1}', f'sgv{i}-{tag}') for i in range(2)]
    made = []
    try:
        for ns, _, _ in hosts:
            res = _ip('netns', 'add', ns)
            if res.returncode != 0:
                unavailable(f'cannot create a network namespace: {res.stderr.strip()}')
            made.append(ns)
        res = _ip('link', 'add', hosts[0][2], 'type', 'veth', 'peer', 'name', hosts[1][2])
        if res.returncode != 0:
            unavailable(f'cannot create a veth pair: {res.stderr.strip()}')
        for ns, addr, dev in hosts:
            for cmd in (['link', 'set', dev, 'netns', ns], ['-n', ns, 'addr', 'add', f'{addr}/24', 'dev', dev],
                        ['-n', ns, 'link', 'set', dev, 'up'], ['-n', ns, 'link', 'set', 'lo', 'up']):
                res = _ip(*cmd)
                assert res.returncode == 0, f'ip {" ".join(cmd)}: {res.stderr}'
        yield hosts
    finally:
        for ns in made:  # deleting a namespace deletes the veth end inside it, and so the pair
            _ip('netns', 'del', ns)


def _torchrun_on(host, first, args, log):
    """Start torchrun for 2 nodes x 1 process on `host`, meeting at the first host's address."""
    ns, addr, dev = host
    # Both namespaces share one host name, which resolves to neither address, so what torchrun and gloo
    # would find from the name is given: GLOO_SOCKET_IFNAME, the interface between the hosts;
    # --local-addr, the address this node gives the others; is_host, which node serves the rendezvous.
    env = dict(os.environ, OMP_NUM_THREADS='1', GLOO_SOCKET_IFNAME=dev, PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    cmd = ['ip', 'netns', 'exec', ns, sys.executable, '-m', 'torch.distributed.run', '--nnodes=2',
           '--nproc-per-node=1', '--rdzv-backend=c10d', f'--rdzv-endpoint={first[1]}:{PORT}',
           '--rdzv-id=two-hosts', f'--rdzv-conf=is_host={int(host == first)}', f'--local-addr={addr}', *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _run_on_both(hosts, args, tmp_path, name):
    """torchrun on both hosts; fails with both logs unless both exit 0 (hang guard 600 s)."""
    logs = [open(tmp_path / f'{name}-{i}.log', 'w+') for i in range(2)]
    procs = [_torchrun_on(h, hosts[0], args, log) for h, log in zip(hosts, logs)]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = []
    for log in logs:
        log.seek(0)
        text.append(log.read())
        log.close()
    assert codes == [0, 0], '\n'.join(t[-3000:] for t in text)


# A few steps of a tiny network: each rank takes its half of every global batch, gradients are
# averaged by the project's GradAverager (buckets sent during backward), Adam steps.
DRIVER = '''
import sys
import torch
from torch_utils import distributed
from two_host_model import make, batches
out_dir = sys.argv[1]
env = distributed.join_torchrun('cpu')
rank, world = env['rank'], env['world_size']
model = make()
distributed.broadcast_module(model)
averager = distributed.GradAverager(model.parameters(), bucket_bytes=256)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for x, y in batches():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x[rank::world]), y[rank::world])
    with averager.final_backward():
        loss.backward()
    averager.finish()
    opt.step()
torch.save(model.state_dict(), f'{out_dir}/rank{rank}.pt')
'''

MODEL = '''
import torch
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
def batches(steps=6, size=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 8, generator=g), torch.randn(size, 4, generator=g)) for _ in range(steps)]
'''


def test_two_hosts_train_to_the_same_parameters_as_one_process(two_hosts, tmp_path):
    (tmp_path / 'two_host_model.py').write_text(MODEL)
    (tmp_path / 'driver.py').write_text(DRIVER)
    _run_on_both(two_hosts, [str(tmp_path / 'driver.py'), str(tmp_path)], tmp_path, 'driver')
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])     # identical bits on both hosts
    # One process, the whole batch of 8 at once: the same parameters up to float rounding (the mean of
    # two half-batch means is not the same float operation as one mean over 8).
    sys.path.insert(0, str(tmp_path))
    try:
        import two_host_model
    finally:
        sys.path.remove(str(tmp_path))
    model = two_host_model.make()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, y in two_host_model.batches():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for k, v in model.state_dict().items():
        assert not torch.allclose(v, start[k], atol=1e-3)                   # training moved every tensor
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-5, atol=1e-6)


def test_train_py_across_two_hosts(two_hosts, tmp_path):
    """The documented multi-node command: train.py --gpus 2 under torchrun on two hosts, one process each."""
    import json
    data = write_image_zip(str(tmp_path / 'tiny.zip'))
    outdir = str(tmp_path / 'runs')
    _run_on_both(two_hosts, ['train.py', f'--outdir={outdir}', f'--data={data}', '--gpus=2', '--device=cpu',
                             '--batch=8', '--kimg=1', '--cbase=256', '--cmax=16', '--map-depth=2', '--metrics=none',
                             '--aug=noaug', '--workers=0', '--snap=1000'], tmp_path, 'train')
    (run_name,) = os.listdir(outdir)
    run_dir = os.path.join(outdir, run_name)
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        assert json.load(f)['num_gpus'] == 2
    with open(os.path.join(run_dir, 'status.json')) as f:
        assert json.load(f)['state'] == 'finished'
    assert 'network-snapshot-000001.pkl' in list_files(run_dir, 'network-snapshot-')
    # Gmain reports batch_gpu=4 samples per rank: pooled over the two hosts, 8 per iteration.
    rows = read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    assert rows[-1]['Loss/G/loss']['num'] % 8 == 0 and rows[-1]['Loss/G/loss']['num'] > 0
