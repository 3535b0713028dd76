"""Helper process and shared helpers for the cache tests (no tests here): a tiny seeded teacher and dataset, cached.

    python tests/cache_worker.py OUT.h5 [--sleep S] [--mode topk|sample] [--dist] [--shards] [--fake-nccl] [--absent-rank R]
    torchrun --nproc_per_node=2 tests/cache_worker.py OUT.h5 --dist
"""
import argparse, os, sys, time
from pathlib import Path
import numpy as np
import torch
import h5py
from tiny import V, S, N, ToyTokenizer, tiny_llama, toy_blocks

__all__ = ['V', 'S', 'N', 'ToyTokenizer', 'tiny_llama', 'toy_blocks', 'SlowTeacher', 'make_generator', 'arrays', 'assert_same_cache', 'HERE', 'ENV']

HERE = Path(__file__).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONPATH=str(HERE.parent))  # for the tests' subprocesses

class SlowTeacher(torch.nn.Module):
    "Wraps a teacher and sleeps before each forward, so a kill can land anywhere."
    def __init__(self, m, sleep): super().__init__(); self.m, self.sleep, self.config = m, sleep, m.config
    def get_output_embeddings(self): return self.m.get_output_embeddings()
    def forward(self, **kw): time.sleep(self.sleep); return self.m(**kw)

def make_generator(mode='topk', sleep=0.0, teacher=None, **kw):
    "The generator every cache test uses: k=16, temperatures (1, 2), batches of 3, segments of 4."
    from kdkit.cache import TeacherLogitsGenerator
    t = teacher if teacher is not None else tiny_llama()
    if sleep: t = SlowTeacher(t, sleep)
    kw = dict(dict(k=16, temperatures=(1.0, 2.0) if mode == 'topk' else (1.0,), batch_size=3, segment_size=4, n_samples=20, seed=5, progress=False), **kw)
    return TeacherLogitsGenerator(t, ToyTokenizer(), mode=mode, **kw)

def arrays(path) -> dict:
    "Every dataset of a cache file, as numpy arrays."
    with h5py.File(path, 'r') as f: return {k: f[k][()] for k in f}

def assert_same_cache(a, b):
    "Two caches hold the same datasets and attributes (created-time free)."
    from kdkit.cache_format import META_KEYS, _mismatch
    from kdkit.cache_files import read_cache_metadata
    A, B = arrays(a), arrays(b)
    assert sorted(A) == sorted(B)
    for k in A: np.testing.assert_array_equal(A[k], B[k], err_msg=k)
    assert _mismatch(read_cache_metadata(a), read_cache_metadata(b), META_KEYS) == []

if __name__ == '__main__':
    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument('out'); p.add_argument('--sleep', type=float, default=0.0); p.add_argument('--mode', default='topk')
    p.add_argument('--dist', action='store_true', help='init a gloo process group (under torchrun)')
    p.add_argument('--wait-timeout', type=float, default=None, help='seconds a rank waits for the others')
    p.add_argument('--shards', action='store_true', help='write a sharded cache (folder + manifest)')
    p.add_argument('--fake-nccl', action='store_true', help='kdkit sees a non-gloo backend (the barriers then use a gloo side group)')
    p.add_argument('--absent-rank', type=int, default=None, help='this rank joins the process group but never writes')
    a = p.parse_args()
    if a.dist:
        import torch.distributed as dist
        dist.init_process_group('gloo')
        if a.fake_nccl: dist.get_backend = lambda group=None: 'nccl'
    if a.absent_rank is not None and a.absent_rank == int(os.environ.get('RANK', 0)):
        time.sleep(4 * (a.wait_timeout or 1)); os._exit(0)
    kw = {} if a.wait_timeout is None else dict(wait_timeout=a.wait_timeout)
    gen, data = make_generator(a.mode, a.sleep, **kw), toy_blocks()
    print('READY', flush=True)  # imports done: the kill tests time their kills from here
    gen.generate(data, Path(a.out), shards=a.shards)
    print('DONE', os.environ.get('RANK', '0'), flush=True)
    if a.dist:
        dist.destroy_process_group()
        sys.stdout.flush(); sys.stderr.flush(); os._exit(0)  # gloo threads alive at interpreter teardown can abort a finished run
