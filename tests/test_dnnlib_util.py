"""dnnlib.util: attribute dicts, construct-by-name, atomic writes, URL resolution, time formatting."""

import hashlib
import os

import pytest

from dnnlib import util


def test_easydict_attribute_access():
    d = util.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2}
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing


def test_construct_and_call_by_name():
    od = util.construct_class_by_name([('x', 1)], class_name='collections.OrderedDict')
    assert list(od.items()) == [('x', 1)]
    assert util.call_func_by_name(16, func_name='math.sqrt') == 4.0
    with pytest.raises(ValueError, match='no attribute'):
        util.get_obj_by_name('math.no_such_function')
    with pytest.raises(ValueError, match='cannot import'):
        util.get_obj_by_name('no_such_module_xyz.f')


@pytest.mark.parametrize('seconds,text', [(0, '0s'), (59, '59s'), (61, '1m 01s'), (3725, '1h 02m 05s'),
                                          (90061, '1d 01h 01m')])
def test_format_time(seconds, text):
    assert util.format_time(seconds) == text


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / 'a.txt'
    util.atomic_write_text(path, 'first')
    with pytest.raises(RuntimeError):
        with util.atomic_open(path, 'w') as f:
            f.write('partial')
            raise RuntimeError('crash while writing')
    assert path.read_text() == 'first'
    assert sorted(os.listdir(tmp_path)) == ['a.txt']  # no temp file left behind


def test_resolve_local_and_file_url(tmp_path):
    path = tmp_path / 'w.bin'
    path.write_bytes(b'abc')
    assert util.resolve_path_or_url(str(path)) == str(path)
    assert util.resolve_path_or_url('file://' + str(path)) == str(path)
    assert util.sha256_file(path) == hashlib.sha256(b'abc').hexdigest()
    with pytest.raises(FileNotFoundError, match='no such file'):
        util.resolve_path_or_url(str(tmp_path / 'missing.pkl'))
    with pytest.raises(ValueError, match='unsupported URL scheme'):
        util.resolve_path_or_url('ftp://example.invalid/x.pkl')


def test_cached_download_is_reused_and_verified(tmp_path, monkeypatch):
    url = 'https://example.invalid/models/net.pkl'
    cached = util.url_cache_path(url, cache_dir=str(tmp_path))
    assert os.path.basename(cached).endswith('_net.pkl')
    with open(cached, 'wb') as f:
        f.write(b'payload')
    # A cached copy that passes the checks is used without touching the network.
    got = util.download_to_cache(url, cache_dir=str(tmp_path), expected_sha256=hashlib.sha256(b'payload').hexdigest())
    assert got == cached
    # A cached copy with the wrong size is not trusted: a (failing) download is attempted instead.
    monkeypatch.setattr(util.time, 'sleep', lambda s: None)
    with pytest.raises(IOError, match='could not download'):
        util.download_to_cache(url, cache_dir=str(tmp_path), expected_size=1, num_attempts=1, verbose=False)


def _serve_once(body, declared_length):
    """A local HTTP server answering every GET with `body` but declaring `declared_length` bytes."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header('Content-Length', str(declared_length))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f'http://127.0.0.1:{server.server_address[1]}/pretrained/net.pkl'


def test_download_complete_and_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(util.time, 'sleep', lambda s: None)
    server, url = _serve_once(b'0123456789', 10)
    try:
        path = util.download_to_cache(url, cache_dir=str(tmp_path / 'ok'), verbose=False)
        with open(path, 'rb') as f:
            assert f.read() == b'0123456789'
    finally:
        server.shutdown()
    # The connection closes after 4 of 10 declared bytes: an error, and nothing left in the cache.
    server, url = _serve_once(b'0123', 10)
    try:
        with pytest.raises(IOError, match='could not download'):
            util.download_to_cache(url, cache_dir=str(tmp_path / 'bad'), num_attempts=2, verbose=False)
    finally:
        server.shutdown()
    leftovers = [n for _, _, names in os.walk(str(tmp_path / 'bad')) for n in names]
    assert leftovers == []


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path), 'downloads')
    util.set_cache_dir(str(tmp_path / 'override'))
    try:
        assert util.make_cache_dir_path() == str(tmp_path / 'override')
    finally:
        util.set_cache_dir(None)
