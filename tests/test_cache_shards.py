"""Sharded caches (segment files + manifest, no merged copy) and rank barriers with timeouts under a process group."""
import sys, json, shutil, subprocess
import pytest
import torch

from kdkit.cache import CachedLogitsDataset, CacheError, read_cache_metadata, read_shards, inspect_cache, plan_segments
from kdkit.cache_format import META_KEYS, _mismatch
from kdkit.cache_files import MANIFEST
import cache_worker as W

HERE, ENV = W.HERE, W.ENV
torch.set_num_threads(1)

def assert_same_items(a, b):
    "Two caches (file or sharded) give the same items and metadata."
    A, B = CachedLogitsDataset(a), CachedLogitsDataset(b)
    assert len(A) == len(B) == W.N
    x, y = A.read(range(W.N)), B.read(range(W.N))
    assert sorted(x) == sorted(y)
    for key in x: torch.testing.assert_close(y[key], x[key], rtol=0, atol=0, msg=key)
    assert _mismatch(A.metadata, B.metadata, META_KEYS) == []
    A.close(); B.close()

def test_sharded_cache_reads_as_the_merged_one(tmp_path, ref):
    out = W.make_generator().generate(W.toy_blocks(), tmp_path / 'c', shards=True)
    assert out.is_dir() and (out / MANIFEST).exists() and not (tmp_path / 'c.parts').exists()
    files, metas = read_shards(out)
    assert [m['n_sequences'] for m in metas] == [b - a for a, b in plan_segments(W.N, 4)]
    assert_same_items(ref, out)
    assert_same_items(ref, out / MANIFEST)  # the manifest names the same cache
    info = inspect_cache(out)
    assert info['rows'] == W.N and info['file_bytes'] == sum(p.stat().st_size for p in files)
    assert W.make_generator().generate(W.toy_blocks(), out, shards=True) == out  # finished: returned as it is

def test_interrupted_run_resumes_into_shards(tmp_path, ref, monkeypatch):
    "Segments a lone rank 0 wrote are reused by a later single-process sharded run."
    out = tmp_path / 'c'
    monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.setenv('RANK', '0')
    with pytest.raises(CacheError, match='waited 0.5 s for the segments'):
        W.make_generator(wait_timeout=0.5).generate(W.toy_blocks(), out, shards=True)
    assert not out.exists() and len(list((tmp_path / 'c.parts').glob('seg-*.h5'))) == len(plan_segments(W.N, 4)[::2])
    monkeypatch.setenv('WORLD_SIZE', '1')
    W.make_generator().generate(W.toy_blocks(), out, shards=True)
    assert_same_items(ref, out)

def test_sharded_and_single_file_replace_each_other_only_when_asked(tmp_path, ref):
    out = tmp_path / 'c'
    W.make_generator().generate(W.toy_blocks(), out, shards=True)
    with pytest.raises(CacheError, match='holds a different cache .*k: 16 != 8'):
        W.make_generator(k=8).generate(W.toy_blocks(), out)
    W.make_generator(k=8).generate(W.toy_blocks(), out, overwrite=True)  # a single file in place of the folder
    assert out.is_file() and read_cache_metadata(out)['k'] == 8 and not (tmp_path / 'c.old').exists()
    W.make_generator().generate(W.toy_blocks(), out, overwrite=True, shards=True)  # and back
    assert out.is_dir()
    assert_same_items(ref, out)

def test_a_folder_that_is_not_a_cache_is_never_replaced(tmp_path):
    out = tmp_path / 'mine'; out.mkdir(); (out / 'notes.txt').write_text('keep me')
    for kw in (dict(), dict(overwrite=True), dict(overwrite=True, shards=True)):
        with pytest.raises(CacheError, match='is a folder but not a finished sharded kdkit cache'):
            W.make_generator().generate(W.toy_blocks(), out, **kw)
    assert (out / 'notes.txt').read_text() == 'keep me' and sorted(p.name for p in out.iterdir()) == ['notes.txt']

def test_hostile_or_mixed_shards_are_refused(tmp_path, ref):
    out = W.make_generator().generate(W.toy_blocks(), tmp_path / 'c', shards=True)
    doc = json.loads((out / MANIFEST).read_text())
    def bad(doc, name='bad.json'):
        (out / name).write_text(json.dumps(doc)); return out / name
    secret = tmp_path / 'secret.h5'; shutil.copy(ref, secret)
    with pytest.raises(CacheError, match=r"shards\[0\].file is '../secret.h5'"):
        CachedLogitsDataset(bad(dict(doc, shards=[dict(file='../secret.h5', n_sequences=W.N)], n_sequences=W.N)))
    with pytest.raises(CacheError, match=r"shards\[0\].file is '/"):
        read_cache_metadata(bad(dict(doc, shards=[dict(file=str(secret), n_sequences=W.N)], n_sequences=W.N)))
    other = W.make_generator(seed=9, k=8).generate(W.toy_blocks(), tmp_path / 'o', shards=True)
    first = doc['shards'][0]['file']
    shutil.copy(other / first, out / 'other.h5')  # a shard of another run, at the right place and size
    with pytest.raises(CacheError, match="does not belong with other.h5: k: 8 != 16"):
        CachedLogitsDataset(bad(dict(doc, shards=[doc['shards'][0] | dict(file='other.h5')] + doc['shards'][1:])) )
    with pytest.raises(CacheError, match=r"'shards' should be a non-empty list"):
        CachedLogitsDataset(bad(dict(doc, shards='seg.h5')))
    (out / MANIFEST).unlink()
    with pytest.raises(CacheError, match='is a folder without manifest.json'): CachedLogitsDataset(out)

def torchrun(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(HERE / 'cache_worker.py'), *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout)

def test_two_ranks_under_a_non_gloo_backend_write_shards(tmp_path, ref):
    "Under a backend other than gloo (NCCL on GPUs) the ranks meet in a gloo side group; the sharded result equals one process."
    r = torchrun(tmp_path / 'c', '--dist', '--fake-nccl', '--shards')
    assert r.returncode == 0 and r.stdout.count('DONE') == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert_same_items(ref, tmp_path / 'c')

@pytest.mark.parametrize('backend', ['gloo', 'fake-nccl'])
def test_lone_rank_in_a_process_group_fails_within_the_timeout(tmp_path, backend):
    "Rank 1 joins the process group but never writes: rank 0's barrier ends in a CacheError naming the step, not a hang."
    r = torchrun(tmp_path / 'c.h5', '--dist', '--wait-timeout', 2, '--absent-rank', 1, *(['--fake-nccl'] if backend != 'gloo' else []), timeout=120)
    assert r.returncode != 0 and 'DONE' not in r.stdout
    assert "CacheError: rank 0: the other ranks did not reach 'parts ready' within 2 s" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / 'c.h5').exists()
