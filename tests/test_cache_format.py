"""Teacher cache format: id encodings at every width, files plain HDF5 tools read, and files the reader must refuse."""
import sys, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import torch
import h5py

from kdkit.cache_format import CacheError, encode_ids, decode_ids
from kdkit.cache_files import read_cache_metadata
from kdkit.cache_reader import CachedLogitsDataset
import cache_worker as W

HERE, ENV = W.HERE, W.ENV
torch.set_num_threads(1)

def test_ids_boundaries_all_widths():
    for V in (300, 65536, 65537, 131072, 131073, 1 << 20):
        ids = np.sort(np.random.default_rng(V).choice(V, (5, 7, 33), replace=True), -1)
        ids[0, 0, :4] = [0, 1, min(65535, V - 2), V - 1]; ids = np.sort(ids, -1)
        lo, hi = encode_ids(ids, V)
        assert lo.dtype == np.uint16 and (hi is None) == (V <= 65536)
        if 65536 < V <= 131072: assert hi.shape[-1] == 5  # one packed bit-plane: ceil(33/8) bytes
        np.testing.assert_array_equal(decode_ids(lo, hi, V), ids)


def test_plain_h5py_and_h5dump_read_default(ref):
    "The default codec needs nothing beyond HDF5 itself: a fresh interpreter without kdkit or hdf5plugin reads it."
    code = ("import h5py, sys; f = h5py.File(sys.argv[1]); print(f.attrs['format'], f['ids'][0].sum() >= 0, f['codes'][()].max() < 128,"
            "'hdf5plugin' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code, str(ref)], capture_output=True, text=True, env=ENV, check=True).stdout
    assert out.split() == ['kdkit-teacher-cache', 'True', 'True', 'False']
    if shutil.which('h5dump'):  # HDF5's own tools (apt: hdf5-tools, 1.10+) decompress the data too
        r = subprocess.run(['h5dump', '-d', '/ids', '-s', '0,0,0', '-c', '1,1,4', str(ref)], capture_output=True, text=True)
        assert r.returncode == 0 and 'DATA {' in r.stdout and '(0,0,0):' in r.stdout, r.stdout + r.stderr
        r = subprocess.run(['h5ls', str(ref)], capture_output=True, text=True)
        assert r.returncode == 0 and 'codes' in r.stdout and 'stats' in r.stdout


def test_bad_files(tmp_path, ref):
    with pytest.raises(CacheError, match='no such cache file'): CachedLogitsDataset(tmp_path / 'missing.h5')
    with pytest.raises(CacheError, match='is a folder without manifest.json'): CachedLogitsDataset(tmp_path)
    (tmp_path / 'text.h5').write_text('hello')
    with pytest.raises(CacheError, match='text.h5: not a readable HDF5'): CachedLogitsDataset(tmp_path / 'text.h5')
    with h5py.File(tmp_path / 'other.h5', 'w') as f: f['x'] = [1]
    with pytest.raises(CacheError, match="other.h5: not a kdkit teacher cache"): CachedLogitsDataset(tmp_path / 'other.h5')
    shutil.copy(ref, tmp_path / 'v9.h5')
    with h5py.File(tmp_path / 'v9.h5', 'a') as f: f.attrs['format_version'] = 9
    with pytest.raises(CacheError, match='v9.h5: cache format version 9 is not supported'): CachedLogitsDataset(tmp_path / 'v9.h5')
    data = Path(ref).read_bytes()
    (tmp_path / 'trunc.h5').write_bytes(data[:len(data) // 2])
    with pytest.raises(CacheError, match='trunc.h5: not a readable HDF5 file'): CachedLogitsDataset(tmp_path / 'trunc.h5')
    shutil.copy(ref, tmp_path / 'nocodes.h5')
    with h5py.File(tmp_path / 'nocodes.h5', 'a') as f: del f['codes']
    with pytest.raises(CacheError, match="nocodes.h5: dataset 'codes' is missing"): CachedLogitsDataset(tmp_path / 'nocodes.h5')


# ---------------------------------------------------------------- hostile files: every one a CacheError naming what is wrong
def _variant(ref, tmp_path, edit, name='bad.h5'):
    p = tmp_path / name
    shutil.copy(ref, p)
    with h5py.File(p, 'a') as f: edit(f)
    return p

def _replace(name, **kw):
    "An edit that replaces dataset `name` by one made with `kw` (shape and dtype of the original unless given)."
    def edit(f):
        d = f[name]; shape, dt = d.shape, d.dtype
        del f[name]
        f.create_dataset(name, **dict(dict(shape=shape, dtype=dt), **kw))
    return edit

def _setattr(key, value): return lambda f: f.attrs.__setitem__(key, value)

HOSTILE = {
    'external storage': (lambda tmp: _replace('labels', chunks=None, external=[(str(tmp / 'secret.bin'), 0, W.N * W.S * 4)]), 'stored outside the file'),
    'soft link': (lambda tmp: lambda f: (f.__delitem__('labels'), f.__setitem__('labels', h5py.SoftLink('/ids'))), "'labels' is a SoftLink"),
    'external link': (lambda tmp: lambda f: (f.__delitem__('labels'), f.__setitem__('labels', h5py.ExternalLink(str(tmp / 'other.h5'), '/x'))), "'labels' is a ExternalLink"),
    'group': (lambda tmp: lambda f: f.create_group('g'), "'g' is a group"),
    'unknown dataset': (lambda tmp: lambda f: f.create_dataset('extra', data=[1]), "unknown dataset 'extra'"),
    'missing dataset': (lambda tmp: lambda f: f.__delitem__('stats'), "dataset 'stats' is missing"),
    'wrong shape': (lambda tmp: _replace('codes', shape=(W.N, W.S, 8), chunks=(1, W.S, 8), fletcher32=True), "'codes' has shape (40, 24, 8)"),
    'wrong dtype': (lambda tmp: _replace('stats', dtype=np.float64, chunks=(1, W.S, 3), fletcher32=True), "'stats' has dtype float64"),
    'big-endian': (lambda tmp: _replace('labels', dtype='>i4', chunks=(1, W.S), fletcher32=True), "'labels' has dtype >i4"),
    'contiguous': (lambda tmp: _replace('labels', chunks=None), "'labels' has chunks None"),
    'no checksum': (lambda tmp: _replace('labels', chunks=(1, W.S)), "'labels' has no per-chunk checksum"),
    'virtual': (lambda tmp: lambda f: (f.__delitem__('labels'), f.create_virtual_dataset('labels', h5py.VirtualLayout((W.N, W.S), np.int32))), 'stored outside the file'),
    'quant_bits 0': (lambda tmp: _setattr('quant_bits', 0), "'quant_bits' is 0"),
    'quant_bits str': (lambda tmp: _setattr('quant_bits', '7'), "'quant_bits' is '7'"),
    'quant_d0 0': (lambda tmp: _setattr('quant_d0', 0.0), "'quant_d0' is 0.0"),
    'quant_dmax nan': (lambda tmp: _setattr('quant_dmax', float('nan')), "'quant_dmax' is nan"),
    'temperatures empty': (lambda tmp: _setattr('temperatures', np.zeros(0, np.float32)), "'temperatures'"),
    'temperatures negative': (lambda tmp: _setattr('temperatures', np.float32([1, -2])), "'temperatures'"),
    'temperatures 2-D': (lambda tmp: _setattr('temperatures', np.float32([[1, 2]])), "'temperatures'"),
    'vocab_size 0': (lambda tmp: _setattr('vocab_size', 0), "'vocab_size' is 0"),
    'vocab_size float': (lambda tmp: _setattr('vocab_size', 300.0), "'vocab_size' is 300.0"),
    'vocab_size larger': (lambda tmp: _setattr('vocab_size', 70000), "'id_bits'"),
    'k 0': (lambda tmp: _setattr('k', 0), "'k' is 0"),
    'mode': (lambda tmp: _setattr('mode', 'dense'), "'mode' is 'dense'"),
    'codec': (lambda tmp: _setattr('codec', 'brotli'), "'codec' is 'brotli'"),
    'format_version str': (lambda tmp: _setattr('format_version', '2'), "cache format version '2' is not supported"),
    'format_version 0': (lambda tmp: _setattr('format_version', 0), 'cache format version 0 is not supported'),
    'n_sequences': (lambda tmp: _setattr('n_sequences', W.N + 1), "has shape (40, 24)"),
    'missing attribute': (lambda tmp: lambda f: f.attrs.__delitem__('seq_len'), "missing attributes ['seq_len']"),
}

@pytest.mark.parametrize('case', list(HOSTILE))
def test_hostile_file_is_refused(tmp_path, ref, case):
    (tmp_path / 'secret.bin').write_bytes(b'\x07' * (W.N * W.S * 4))
    make, msg = HOSTILE[case]
    p = _variant(ref, tmp_path, make(tmp_path))
    with pytest.raises(CacheError) as e: CachedLogitsDataset(p)
    assert str(e.value).startswith(str(p)) and msg in str(e.value), str(e.value)

def test_hostile_values_are_refused_on_read(tmp_path, ref):
    "Values no writer stores (NaN/positive log-mass, ids >= V, codes beyond the width): CacheError naming file, dataset, row."
    def put(name, row, fn):
        def edit(f):
            a = f[name][row]; fn(a); f[name][row] = a
        return edit
    cases = [('stats', put('stats', 7, lambda a: a.__setitem__((3, 1), np.nan)), "dataset 'stats' row 7"),
             ('stats', put('stats', 2, lambda a: a.__setitem__((0, 0), 0.5)), "dataset 'stats' row 2"),
             ('stats', put('stats', 4, lambda a: a.__setitem__((5, 2), np.inf)), "dataset 'stats' row 4"),
             ('ids', put('ids', 3, lambda a: a.__setitem__((1, 0), 299 + 1)), "dataset 'ids' row 3: teacher ids at or above vocab_size 300"),
             ('codes', put('codes', 5, lambda a: a.__setitem__((0, 0), 200)), "dataset 'codes' row 5"),
             ('input_ids', put('input_ids', 6, lambda a: a.__setitem__(0, 300)), "dataset 'input_ids' row 6")]
    for i, (_, edit, msg) in enumerate(cases):
        p = _variant(ref, tmp_path, edit, f'v{i}.h5')
        ds = CachedLogitsDataset(p)  # the structure is fine: the values are checked as they are read
        ds.read([0, 1])
        with pytest.raises(CacheError, match=msg.replace('(', r'\(')): ds.read(range(W.N))

@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('mode', ['topk', 'sample'])
def test_older_versions_are_still_read(tmp_path, ref, version, mode):
    "A format-1 file (no checksums) or format-2 file (sample slots unpacked, plain labels) reads to the same targets as the current one."
    from kdkit.cache_format import create_cache_datasets, from_stored, LIBVER, FORMAT_VERSION
    cur = ref if mode == 'topk' else W.make_generator('sample').generate(W.toy_blocks(), tmp_path / 'cur.h5')
    meta = read_cache_metadata(cur)
    assert meta['format_version'] == FORMAT_VERSION == 3
    p = tmp_path / f'v{version}.h5'
    with h5py.File(cur) as src, h5py.File(p, 'w', libver=LIBVER) as f:
        create_cache_datasets(f, W.N, dict(meta, format_version=version))
        for name, a in from_stored({name: src[name][()] for name in src}, meta).items(): f[name][:] = a
    with h5py.File(p) as f: assert f['ids'].fletcher32 == (version == 2) and f.attrs['format_version'] == version
    with h5py.File(cur) as f: assert (f['labels'][()] == 0).mean() > 0.5  # version 3: labels stored against the tokens
    a, b = CachedLogitsDataset(cur).read(range(W.N)), CachedLogitsDataset(p).read(range(W.N))
    for k in a: assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- teacher hidden states in the cache
@pytest.fixture(scope='module')
def hidden_ref(tmp_path_factory):
    "A cache that also stores teacher layers 1 and 0 (in that order)."
    return W.make_generator(hidden_layers=[1, 0]).generate(W.toy_blocks(), tmp_path_factory.mktemp('hid') / 'hid.h5')

def test_hidden_states_stored_and_read(hidden_ref, ref):
    "The outputs of the asked layers (before the final norm), bf16, [B, L, S, H] under teacher_hidden; the targets unchanged."
    from kdkit.hidden import layer_outputs
    m = read_cache_metadata(hidden_ref)
    assert m['hidden_layers'] == [1, 0] and m['hidden_size'] == 64 and read_cache_metadata(ref)['hidden_layers'] == []
    assert m['teacher_num_layers'] == 2 and read_cache_metadata(ref)['teacher_num_layers'] == 0   # the depth "auto" pairs need
    ds = CachedLogitsDataset(hidden_ref)
    assert ds.hidden_layers == [1, 0] and CachedLogitsDataset(ref).hidden_layers == []
    b = ds.read([0, 1, 2])
    assert b['teacher_hidden'].shape == (3, 2, W.S, 64) and b['teacher_hidden'].dtype == torch.bfloat16
    t, data = W.tiny_llama(), W.toy_blocks()
    with torch.no_grad(), layer_outputs(t, [0, 1]) as got:
        t(input_ids=torch.as_tensor(data['input_ids'][:3]), attention_mask=torch.as_tensor(data['attention_mask'][:3]))
    torch.testing.assert_close(b['teacher_hidden'].float(), torch.stack([got[1], got[0]], 1).float(), rtol=1e-2, atol=1e-2)
    batch = ds.collate([ds[4], ds[7]])
    assert batch['teacher_hidden'].shape == (2, 2, W.S, 64)
    A = CachedLogitsDataset(ref).read([0, 1, 2])
    for k in A: assert torch.equal(A[k], b[k]), k
    with h5py.File(hidden_ref) as f: assert f['hidden'].dtype == np.uint16 and f['hidden'].fletcher32 and f['hidden'].chunks == (1, 2, W.S, 64)

def test_hidden_layers_bad_values_named():
    with pytest.raises(ValueError, match=r'hidden_layers=\[5\].*2 decoder layers'): W.make_generator(hidden_layers=[5])
    with pytest.raises(ValueError, match='distinct'): W.make_generator(hidden_layers=[1, 1])

@pytest.mark.parametrize('case', ['wrong dtype', 'wrong shape', 'no attribute', 'bad attribute', 'bad depth', 'flipped bit'])
def test_hostile_hidden_dataset_is_refused(tmp_path, hidden_ref, ref, case):
    edits = {'wrong dtype': (hidden_ref, _replace('hidden', dtype=np.float32, chunks=(1, 2, W.S, 64), fletcher32=True), "'hidden' has dtype float32"),
             'wrong shape': (hidden_ref, _replace('hidden', shape=(W.N, 1, W.S, 64), chunks=(1, 1, W.S, 64), fletcher32=True), "'hidden' has shape"),
             'no attribute': (ref, lambda f: f.create_dataset('hidden', data=np.zeros((W.N, 1, W.S, 64), np.uint16)), "unknown dataset 'hidden'"),
             'bad attribute': (hidden_ref, _setattr('hidden_layers', np.float32([1.5])), "'hidden_layers'"),
             'bad depth': (hidden_ref, _setattr('teacher_num_layers', 1), "'teacher_num_layers'")}
    if case == 'flipped bit':
        p = tmp_path / 'flip.h5'; shutil.copy(hidden_ref, p)
        with h5py.File(p, 'r') as f: off = f['hidden'].id.get_chunk_info(3).byte_offset + 17
        raw = bytearray(p.read_bytes()); raw[off] ^= 0x10; p.write_bytes(bytes(raw))
        with pytest.raises(CacheError, match="dataset 'hidden' row 3"): CachedLogitsDataset(p).read([3])
        return
    src, edit, msg = edits[case]
    with pytest.raises(CacheError, match=msg): CachedLogitsDataset(_variant(src, tmp_path, edit))
