"""Teacher cache format: id encodings at every width, files plain HDF5 tools read, and files the reader must refuse."""
import os, sys, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import torch
import h5py

from kdkit.cache_format import CacheError, encode_ids, decode_ids
from kdkit.cache_reader import CachedLogitsDataset
import cache_worker as W

HERE = Path(__file__).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONPATH=str(HERE.parent))
torch.set_num_threads(1)

@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "An uninterrupted single-process top-k cache of the worker's data."
    return W.make_generator().generate(W.toy_blocks(), tmp_path_factory.mktemp('ref') / 'ref.h5')

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
    with pytest.raises(CacheError, match='is a folder'): CachedLogitsDataset(tmp_path)
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
