"""dataset_tool.py celebamask / verify as an unkind user would meet them: a pool full of bad files,
--skip-bad, the stable selection contract, and damaged or truncated zips."""

import io
import json
import os
import shutil
import stat
import zipfile

import numpy as np
import PIL.Image
import pytest

from tests.dataset_tool_helpers import run as _run, noise as _noise, save as _save
from dataset_build import pools, selection, study

K, N, M, R = 2, 4, 1, 32


def _jpeg_bytes(arr, **kwargs):
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, format='jpeg', **kwargs)
    return buf.getvalue()


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def _bad_tree(tmp_path):
    """A CelebAMask-HQ-like tree with one file of every bad kind. Usable files: exactly K*N real
    (3 plain + 5 that need converting) and K*M generated, so --skip-bad selects all of them.

    Returns (celeba root, generated root, {file name: expected words in its report line}).
    """
    celeba = tmp_path / 'CelebAMask-HQ'
    img = celeba / 'CelebA-HQ-img'
    for i in range(3):
        _save(str(img / f'{i}.jpg'), _noise((64, 64, 3), i), quality=90)
    (celeba / 'CelebAMask-HQ-attribute-anno.txt').write_text('30000\n')  # annotation files beside the folder
    unusable = {
        '10.jpg': 'empty file',
        '11.jpg': 'truncated',
        '12.jpg': 'not an image',
        '18.jpg': 'not square',
        '19.jpg': 'smaller than --resolution',
        '20.jpg': 'byte-identical copy of the real image',
        'sd_dup.jpg': 'byte-identical copy of the real image',
    }
    _write(str(img / '10.jpg'), b'')
    _write(str(img / '11.jpg'), _jpeg_bytes(_noise((64, 64, 3), 11))[:1500])
    _write(str(img / '12.jpg'), b'This is a text file, not a JPEG.\n' * 20)
    _save(str(img / '13.jpg'), _noise((64, 64, 3), 13), format='png')  # PNG named .jpg
    _save(str(img / '14.jpg'), PIL.Image.new('CMYK', (64, 64), (10, 200, 30, 0)), quality=95)
    _save(str(img / '15.jpg'), _noise((64, 64), 15), quality=90)  # grayscale
    _save(str(img / '16.png'), PIL.Image.fromarray((_noise((64, 64), 16).astype(np.uint16) * 257)))
    _save(str(img / '17.png'), _noise((64, 64, 4), 17))  # RGBA
    _save(str(img / '18.jpg'), _noise((48, 64, 3), 18))  # 64x48
    _save(str(img / '19.jpg'), _noise((16, 16, 3), 19))
    shutil.copyfile(img / '0.jpg', img / '20.jpg')
    _write(str(img / '.DS_Store'), b'\0\0\0\1Bud1')
    _write(str(img / 'Thumbs.db'), b'\xd0\xcf\x11\xe0')
    gen = tmp_path / 'generated'
    for i in range(K * M):
        _save(str(gen / 'batch' / f'sd_{i:03d}.png'), _noise((48, 48, 3), 500 + i))
    shutil.copyfile(img / '1.jpg', gen / 'batch' / 'sd_dup.jpg')
    converted = {'13.jpg': 'named .jpg but the content is PNG', '14.jpg': 'CMYK -> RGB', '15.jpg': 'L -> RGB',
                 '16.png': '16-bit', '17.png': 'RGBA -> RGB'}
    return str(celeba), str(gen), unusable, converted


def _build(celeba, gen, dest, *extra, k=K, n=N, m=M, r=R):
    return _run('celebamask', '--celeba-dir', celeba, '--generated-dir', gen, '--dest', dest, '--num-subsets', k,
                '--subset-size', n, '--num-generated', m, '--resolution', r, '--seed', 5, '--workers', 2, *extra)


def _line_for(output, name):
    lines = [ln for ln in output.splitlines() if os.path.basename(ln.split(':')[0].strip()) == name]
    assert len(lines) == 1, f'{name}: expected one report line in\n{output}'
    return lines[0]


def test_one_pass_lists_every_problem_and_writes_nothing(tmp_path):
    celeba, gen, unusable, converted = _bad_tree(tmp_path)
    dest = tmp_path / 'out'
    before = sorted(os.listdir(tmp_path))
    r = _build(celeba, gen, dest)
    assert r.exit_code == 1, r.output
    for name, words in {**unusable, **converted}.items():
        assert words in _line_for(r.output, name), name
    assert '-> lower --resolution' in _line_for(r.output, '19.jpg')
    # The copy is named as the duplicate, its original is the file it copies.
    assert _line_for(r.output, '20.jpg').endswith(f'{os.path.join(celeba, "CelebA-HQ-img", "0.jpg")} -> delete this copy')
    assert os.path.join('CelebA-HQ-img', '1.jpg') in _line_for(r.output, 'sd_dup.jpg')
    assert '<_io.' not in r.output and 'object at 0x' not in r.output
    assert 'img/s' not in r.output  # no progress bar when not writing to a terminal
    assert '2 other files ignored (not images: .DS_Store, Thumbs.db)' in r.output
    assert r.output.strip().splitlines()[-1].startswith('Error: 7 source file(s) cannot be used')
    assert sorted(os.listdir(tmp_path)) == before, 'the failing run wrote something'


def test_skip_bad_builds_the_study_and_records_what_it_left_out(tmp_path):
    celeba, gen, unusable, converted = _bad_tree(tmp_path)
    dest = str(tmp_path / 'out')
    r = _build(celeba, gen, dest, '--skip-bad', '--resize-filter', 'box')
    assert r.exit_code == 0, r.output
    for name in unusable:
        assert unusable[name] in _line_for(r.output, name)
    for name in study.set_names(K):
        m = json.load(open(study.manifest_path(dest, name)))
        assert sorted(os.path.basename(s['source']) for s in m['skipped']) == sorted(unusable)
        assert m['options']['skip_bad'] is True and '--skip-bad' in m['command']
        assert m['options']['resize_filter'] == 'box' and '--resize-filter=box' in m['command']
        assert m['num_images'] == N and m['selection'] == selection.SELECTION
    real = [json.load(open(study.manifest_path(dest, f'CelebAMask-HQ{k + 1}'))) for k in range(K)]
    notes = {e['source']: e['notes'] for m in real for e in m['images']}
    assert sorted(notes) == sorted(['0.jpg', '1.jpg', '2.jpg', *converted])  # every usable real file, once
    for name, words in converted.items():
        assert any(words in n for n in notes[name]), (name, notes[name])
    for path in [os.path.join(dest, n) for n in os.listdir(dest)]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask(), path  # manifests/CSV: not 0600
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')], 'staging folder left behind'


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_many_too_small_images_suggest_lowering_resolution(tmp_path):
    img = tmp_path / 'c' / 'CelebA-HQ-img'
    for i in range(12):
        _save(str(img / f'{i}.png'), _noise((24 if i else 40, 24 if i else 40, 3), i))
    r = _run('celebamask', '--celeba-dir', tmp_path / 'c', '--dest', tmp_path / 'o', '--num-subsets', 1,
             '--subset-size', 4, '--num-generated', 0, '--resolution', 32)
    assert r.exit_code == 1
    assert '11 images are smaller than 32x32: lower --resolution (every square image here reaches 16x16)' in r.output
    assert 'lower --resolution' in r.output.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / 'o')


# ----------------------------------------------------------------------------
# The selection contract.


def _roomy_pools(tmp_path, num_real=40, num_gen=20):
    img = tmp_path / 'celeba' / 'CelebA-HQ-img'
    for i in range(num_real):
        _save(str(img / f'{i}.png'), _noise((16, 16, 3), i))
    gen = tmp_path / 'gen'
    for i in range(num_gen):
        _save(str(gen / f'g{i:02d}.png'), _noise((16, 16, 3), 900 + i))
    return str(tmp_path / 'celeba'), str(gen), img


def _zips(dest):
    return {n: open(os.path.join(dest, n), 'rb').read() for n in sorted(os.listdir(dest)) if n.endswith('.zip')}


def _sources(dest, name):
    return {e['source'] for e in json.load(open(study.manifest_path(dest, name)))['images']}


def test_selection_contract(tmp_path):
    celeba, gen, img = _roomy_pools(tmp_path)
    args = dict(k=3, n=4, m=2, r=16)
    _write(str(img / '40.png'), b'\x89PNG\r\n\x1a\n broken')  # an unusable file
    r = _build(celeba, gen, tmp_path / 'a', '--skip-bad', **args)
    assert r.exit_code == 0 and 'little slack' not in r.output, r.output
    a = _zips(tmp_path / 'a')
    assert len(a) == 6

    os.remove(img / '40.png')  # as the tool says: delete it
    assert _build(celeba, gen, tmp_path / 'b', **args).exit_code == 0
    assert _zips(tmp_path / 'b') == a, 'a skipped file and a deleted one must give the same sets'

    victim = sorted(_sources(tmp_path / 'a', 'CelebAMask-HQ2'))[0]
    os.remove(img / victim)
    assert _build(celeba, gen, tmp_path / 'c', **args).exit_code == 0
    c = _zips(tmp_path / 'c')
    for name in ('CelebAMask-HQ1.zip', 'CelebAMask-HQ3.zip', 'Mix-dataset1.zip', 'Mix-dataset3.zip'):
        assert c[name] == a[name], f'{name} changed although the deleted file was in set 2'
    old, new = _sources(tmp_path / 'a', 'CelebAMask-HQ2'), _sources(tmp_path / 'c', 'CelebAMask-HQ2')
    assert old - new == {victim} and len(new - old) == 1

    unused = next(f'{i}.png' for i in range(40) if not any(
        f'{i}.png' in _sources(tmp_path / 'a', f'CelebAMask-HQ{k}') for k in (1, 2, 3)))
    os.remove(img / unused)
    assert _build(celeba, gen, tmp_path / 'd', **args).exit_code == 0
    assert _zips(tmp_path / 'd') == c, 'deleting an unselected file must change nothing'


def test_selection_prefix_and_independent_streams():
    ids = [f'{i}.jpg' for i in range(200)]
    gen = [f'g/{i}.png' for i in range(60)]
    plan = selection.plan_study_sets(ids, gen, 4, 20, 5, seed=11)
    assert [len(s) for s in plan.subsets] == [20] * 4 and len({i for s in plan.subsets for i in s}) == 80
    assert all(len(r) == 5 and len(set(r)) == 5 and max(r) < 20 for r in plan.replaced)
    assert len({i for g in plan.generated for i in g}) == 20 and not plan.topped_up
    assert selection.plan_study_sets(ids, gen, 4, 20, 3, seed=11).subsets == plan.subsets  # M leaves real sets
    smaller = selection.plan_study_sets(ids, gen, 4, 10, 3, seed=11)
    assert all(set(s) <= set(b) for s, b in zip(smaller.subsets, plan.subsets))  # a smaller N: a prefix
    assert selection.plan_study_sets(ids, gen, 4, 20, 5, seed=12).subsets != plan.subsets


def test_tight_pool_is_topped_up_and_says_so(tmp_path):
    celeba, gen, _ = _roomy_pools(tmp_path, num_real=6, num_gen=2)
    r = _build(celeba, gen, tmp_path / 'o', k=3, n=2, m=0, r=16)
    assert r.exit_code == 0, r.output
    assert len(set().union(*[_sources(tmp_path / 'o', f'CelebAMask-HQ{k}') for k in (1, 2, 3)])) == 6
    plan = selection.plan_study_sets([f'{i}.png' for i in range(6)], [], 3, 2, 0, seed=5)
    assert ('little slack' in r.output) == bool(plan.topped_up)


# ----------------------------------------------------------------------------
# A study is written whole or not at all; verify on damaged zips.


def test_failure_during_conversion_leaves_dest_as_it_was(tmp_path, monkeypatch):
    celeba, gen, img = _roomy_pools(tmp_path, num_real=12, num_gen=4)
    dest = tmp_path / 'out'
    dest.mkdir()
    (dest / 'notes.txt').write_text('mine')
    calls = []

    def convert_then_fail(task):  # in-process (--workers 1): the 7th image fails, after set 1 is complete
        calls.append(task)
        if len(calls) == 7:
            return dict(png=None, sha256=None, stats=None, error='disk read error (simulated)')
        return real_convert(task)

    real_convert = study.convert_study_image
    monkeypatch.setattr(study, 'convert_study_image', convert_then_fail)
    r = _run('celebamask', '--celeba-dir', celeba, '--generated-dir', gen, '--dest', dest, '--num-subsets', 2,
             '--subset-size', 3, '--num-generated', 1, '--resolution', 16, '--workers', 1)
    assert r.exit_code == 1 and 'simulated' in r.output
    assert os.listdir(dest) == ['notes.txt'] and (dest / 'notes.txt').read_text() == 'mine'
    assert sorted(os.listdir(tmp_path)) == ['celeba', 'gen', 'out']


@pytest.fixture(scope='module')
def small_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('verify')
    celeba, gen, _ = _roomy_pools(tmp, num_real=12, num_gen=4)
    dest = str(tmp / 'out')
    assert _build(celeba, gen, dest, k=2, n=4, m=1, r=16).exit_code == 0
    return dest


def _copy_set(small_study, tmp_path, name):
    for ext in ('.zip', '.manifest.json'):
        shutil.copyfile(os.path.join(small_study, name + ext), tmp_path / (name + ext))
    return str(tmp_path / (name + '.zip'))


def test_verify_reports_a_bit_flip_as_one_line(small_study, tmp_path):
    path = _copy_set(small_study, tmp_path, 'CelebAMask-HQ1')
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo('00000/img00000002.png')
    data = bytearray(open(path, 'rb').read())
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0x01  # one bit inside the entry's PNG bytes
    open(path, 'wb').write(bytes(data))
    r = _run('verify', path)
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if path in ln]
    assert len(lines) == 2, r.output  # the zip's line, and the set's summary
    assert '1 of 4 entries damaged: 00000/img00000002.png' in lines[0]
    assert 'Traceback' not in r.output


def test_verify_reports_a_truncated_zip_as_one_line(small_study, tmp_path):
    path = _copy_set(small_study, tmp_path, 'Mix-dataset2')
    with zipfile.ZipFile(path) as zf:
        cut = zf.getinfo('00000/img00000002.png').header_offset + 200
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:cut])
    r = _run('verify', path.replace('.zip', '.manifest.json'))
    assert r.exit_code == 1
    zip_line = next(ln for ln in r.output.splitlines() if ln.strip().startswith(path))
    assert 'truncated' in zip_line and '1 of 4 entries damaged: 00000/img00000002.png' in zip_line
    assert zip_line.endswith('1 of 4 entries missing: 00000/img00000003.png')  # cut inside entry 2 of 0..3
    assert r.output.count('\n') == 3, r.output  # zip line, summary, final error


def test_verify_refuses_broken_manifests_in_one_line(small_study, tmp_path):
    cut = tmp_path / 'cut.manifest.json'
    cut.write_bytes(open(study.manifest_path(small_study, 'CelebAMask-HQ1'), 'rb').read()[:300])
    other = tmp_path / 'other.manifest.json'
    other.write_text('{"format": "sg2ada-study-manifest/2", "set": "x"}')
    for path, words in ((cut, 'cannot read the manifest'), (other, 'incomplete manifest'),
                        (tmp_path / 'none.zip', 'manifest not found')):
        r = _run('verify', path)
        assert r.exit_code == 1 and words in r.output and 'Traceback' not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_the_copy_is_named_as_the_duplicate():
    def rec(kind, file_id):
        return dict(kind=kind, id=file_id, path=f'/{kind}/{file_id}', sha256='same', problem=None, fix=None)
    # 'a copy.png' sorts before 'a.png' (' ' < '.'), yet it is the copy; '12.jpg' copies '3.jpg'.
    records = [rec('generated', 'a copy.png'), rec('generated', 'a.png')]
    pools.mark_duplicates(records)
    assert [bool(r['problem']) for r in records] == [True, False] and '/generated/a.png' in records[0]['problem']
    records = [rec('real', '3.jpg'), rec('real', '12.jpg'), rec('generated', '0.jpg')]
    pools.mark_duplicates(records)
    assert [bool(r['problem']) for r in records] == [False, True, True]
    assert all('the real image /real/3.jpg' in r['problem'] for r in records[1:])


def test_a_long_problem_list_is_grouped_and_written_in_full_to_a_report(tmp_path):
    """A pool whose images are all too small prints a few grouped lines, not one line per file; the
    full list goes to a report file whose path is printed."""
    img = tmp_path / 'c' / 'CelebA-HQ-img'
    for i in range(40):
        _save(str(img / f'{i}.png'), _noise((16, 16, 3), i))
    for i in range(40, 42):
        _save(str(img / f'{i}.png'), _noise((48, 40, 3), i))
    r = _run('celebamask', '--celeba-dir', tmp_path / 'c', '--dest', tmp_path / 'o', '--num-subsets', 1,
             '--subset-size', 4, '--num-generated', 0, '--resolution', 32)
    assert r.exit_code == 1 and 'Traceback' not in r.output
    lines = r.output.splitlines()
    assert len(lines) < 20, r.output
    assert '  40 file(s): smaller than --resolution=32 -> lower --resolution, or delete it' in lines
    assert '  2 file(s): not square -> crop it to a square, or delete it' in lines
    assert sum(line.startswith('      e.g. ') for line in lines) == 3 + 2
    (report_line,) = [line for line in lines if 'the full list (42 files): ' in line]
    report = report_line.split('the full list (42 files): ')[1]
    assert report == str(tmp_path / 'o.problems.txt')
    listed = open(report).read()
    assert all(f'{img / f"{i}.png"}: ' in listed for i in range(42))
    assert not os.path.exists(tmp_path / 'o')  # no set was written


def test_mixed_sets_say_which_images_are_generated(small_study):
    """dataset.json keeps upstream's "labels" and adds the generated images' names, which the dataset reads."""
    from training.dataset import ImageFolderDataset
    for name in ('CelebAMask-HQ1', 'Mix-dataset1'):
        with open(study.manifest_path(small_study, name)) as f:
            manifest = json.load(f)
        path = os.path.join(small_study, name + '.zip')
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read('dataset.json'))
        assert meta['labels'] is None
        kinds = {e['archive_name']: e['kind'] for e in manifest['images']}
        assert sorted(meta['generated']) == sorted(n for n, k in kinds.items() if k == 'generated')
        ds = ImageFolderDataset(path)
        assert ds.part_labels.tolist() == [kinds[n] == 'generated' for n in ds.image_fnames]
        ds.close()
    assert sum(ImageFolderDataset(os.path.join(small_study, 'Mix-dataset1.zip')).part_labels) == 1
