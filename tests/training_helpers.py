"""Shared set-up for the training tests: a tiny image zip and tiny network kwargs.

The dataset is written here with PIL in upstream's zip layout (PNG files plus an optional
dataset.json), so these tests do not depend on dataset_tool.py.
"""

import io
import json
import os
import zipfile

import numpy as np
import PIL.Image

import dnnlib

RES = 32


def write_image_zip(path, num_images=16, res=RES, labels=False, seed=0):
    """Write `num_images` smooth random RGB images of res x res into a dataset zip.

    Args:
        path: output .zip path.
        num_images: image count.
        res: width and height.
        labels: also write dataset.json with integer labels 0..3.
        seed: numpy seed of the pixels.

    Returns:
        the path.
    """
    rnd = np.random.RandomState(seed)
    with zipfile.ZipFile(path, 'w') as zf:
        label_list = []
        for i in range(num_images):
            # Low-frequency blobs upsampled to res, so the images are not pure noise.
            small = rnd.randint(0, 256, size=[4, 4, 3]).astype(np.uint8)
            img = PIL.Image.fromarray(small, 'RGB').resize((res, res), PIL.Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format='PNG')
            name = f'{i // 1000:05d}/img{i:08d}.png'
            zf.writestr(name, buf.getvalue())
            label_list.append([name, i % 4])
        if labels:
            zf.writestr('dataset.json', json.dumps({'labels': label_list}))
    return path


def tiny_loop_kwargs(data_path, run_dir, **overrides):
    """training_loop kwargs for a tiny 32x32 GAN that trains in well under a second per step on CPU.

    Args:
        data_path: dataset zip.
        run_dir: output directory (None for no outputs).
        **overrides: replace any key.

    Returns:
        dict of training_loop kwargs.
    """
    kw = dict(
        run_dir=run_dir,
        training_set_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data_path,
                                 use_labels=False, max_size=None, xflip=False),
        data_loader_kwargs=dict(pin_memory=False, num_workers=0),
        G_kwargs=dict(class_name='training.networks.Generator', z_dim=32, w_dim=32,
                      mapping_kwargs=dict(num_layers=2),
                      synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None)),
        D_kwargs=dict(class_name='training.networks.Discriminator', block_kwargs=dict(), mapping_kwargs=dict(),
                      epilogue_kwargs=dict(mbstd_group_size=4), channel_base=256, channel_max=16,
                      num_fp16_res=0, conv_clamp=None),
        G_opt_kwargs=dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8),
        D_opt_kwargs=dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8),
        loss_kwargs=dict(class_name='training.loss.StyleGAN2Loss', r1_gamma=0.01),
        metrics=[],
        random_seed=0,
        batch_size=4,
        batch_gpu=4,
        ema_kimg=0.01,
        ema_rampup=0.05,
        total_kimg=0.032,
        kimg_per_tick=0.008,
        image_snapshot_ticks=1000,
        network_snapshot_ticks=1000,
        device='cpu',
        print_summary=False,
    )
    kw.update(overrides)
    return kw


def read_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def list_files(run_dir, prefix):
    return sorted(name for name in os.listdir(run_dir) if name.startswith(prefix))


def ada_kwargs(augpipe='bgc', **extra):
    """augment_kwargs / ADA settings for a run that exercises the augmentation pipe."""
    from training import augment
    kw = dict(augment_kwargs=dict(class_name='training.augment.AugmentPipe', **augment.augpipe_specs[augpipe]),
              ada_target=0.6)
    kw.update(extra)
    return kw


EasyDict = dnnlib.EasyDict


# ----------------------------------------------------------------------------
# A tiny training process for tests that send real signals:
#   python tests/training_helpers.py RUN_DIR DATA_ZIP '{"total_kimg": 0.2, ...}'
# trains through training_loop.run_training (log.txt, checkpoints, status.json) with a stand-in
# metric that appends one line per evaluation to metric-fake.jsonl, and exits as train.py does:
# 0 finished, 75 preempted.


def _fake_metric_fn(run_dir):
    def evaluate(G, snapshot_pkl, cur_nimg, device):
        line = json.dumps(dict(results=dict(fake=1.0), metric='fake', snapshot_pkl=os.path.basename(snapshot_pkl),
                               kimg=cur_nimg / 1e3)) + '\n'
        with open(os.path.join(run_dir, 'metric-fake.jsonl'), 'at', encoding='utf-8') as f:
            f.write(line)
        return dict(fake=1.0)
    return evaluate


def _main(argv):
    from training import preempt, training_loop
    run_dir, data, overrides = argv[0], argv[1], json.loads(argv[2]) if len(argv) > 2 else {}
    os.makedirs(run_dir, exist_ok=True)
    kw = tiny_loop_kwargs(data, run_dir, **overrides)
    if overrides.pop('ada', False):
        kw.update(ada_kwargs(ada_kimg=0.02))
    kw.pop('ada', None)
    state = training_loop.run_training(0, kw, metric_fn=_fake_metric_fn(run_dir) if kw.get('metrics') else None)
    return preempt.EXIT_PREEMPTED if state == 'preempted' else 0


if __name__ == '__main__':
    import sys
    sys.exit(_main(sys.argv[1:]))
