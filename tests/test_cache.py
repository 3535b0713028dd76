"""Teacher cache: round trips, kill-and-resume with real SIGKILLs, torchrun sharding, DataLoader workers,
the Trainer, the CLI, and every bad input of issue 3."""
import os, sys, json, shutil, signal, subprocess, time, hashlib
from pathlib import Path
import numpy as np
import pytest
import torch
import h5py

import kdkit.cache as kc
from kdkit.cache import (TeacherLogitsGenerator, CachedLogitsDataset, CacheError, collate_teacher_batch,
                         reconstruct_teacher_logits, encode_ids, decode_ids, read_cache_metadata)
from kdkit.losses import topk_targets, distillation_loss

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import test_cache_worker as W

torch.set_num_threads(1)
ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONPATH=str(HERE.parent))

def sha(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()

def arrays(path):
    "Every dataset of a cache file, as numpy arrays."
    with h5py.File(path, 'r') as f: return {k: f[k][()] for k in f}

def assert_same_cache(a, b):
    "Two caches hold the same datasets and attributes (created-time free)."
    A, B = arrays(a), arrays(b)
    assert sorted(A) == sorted(B)
    for k in A: np.testing.assert_array_equal(A[k], B[k], err_msg=k)
    ma, mb = read_cache_metadata(a), read_cache_metadata(b)
    assert kc._mismatch(ma, mb, kc.META_KEYS) == []

@pytest.fixture(scope='module')
def ref(tmp_path_factory):
    "An uninterrupted single-process top-k cache of the worker's data."
    p = tmp_path_factory.mktemp('ref') / 'ref.h5'
    W.make_generator().generate(W.toy_data(), p)
    return p

# ---------------------------------------------------------------- encodings and round trips
def test_ids_boundaries_all_widths():
    for V in (300, 65536, 65537, 131072, 131073, 1 << 20):
        ids = np.sort(np.random.default_rng(V).choice(V, (5, 7, 33), replace=True), -1)
        ids[0, 0, :4] = [0, 1, min(65535, V - 2), V - 1]; ids = np.sort(ids, -1)
        lo, hi = encode_ids(ids, V)
        assert lo.dtype == np.uint16 and (hi is None) == (V <= 65536)
        if 65536 < V <= 131072: assert hi.shape[-1] == 5  # one packed bit-plane: ceil(33/8) bytes
        np.testing.assert_array_equal(decode_ids(lo, hi, V), ids)

def test_17bit_vocab_through_file(tmp_path):
    "A 70,000-token teacher: ids above 65,535 survive the file (17-bit packing)."
    V = 70000
    t = W.toy_teacher(vocab=V, layers=1)
    with torch.no_grad(): t.lm_head.weight[65536:] += 0.5  # put high ids into the top-k
    data = W.toy_data(n=3, seq_len=8, vocab=V)
    TeacherLogitsGenerator(t, W.ToyTokenizer(V), k=32, batch_size=3, progress=False).generate(data, tmp_path / 'c.h5')
    ds = CachedLogitsDataset(tmp_path / 'c.h5')
    with h5py.File(tmp_path / 'c.h5') as f: assert f['ids_hi'].shape == (3, 8, 4) and f['input_ids'].dtype == np.int32
    with torch.no_grad(): logits = t(input_ids=torch.as_tensor(data['input_ids']), attention_mask=torch.as_tensor(data['attention_mask'])).logits
    r = topk_targets(logits, 32)
    b = ds.read([0, 1, 2])
    assert int(b['teacher_ids'].max()) >= 65536
    assert torch.equal(b['teacher_ids'], r['teacher_ids'].sort(-1).values)
    assert torch.equal(b['input_ids'], torch.as_tensor(data['input_ids']))

def test_topk_fields_equal_topk_targets(ref):
    "Ids, tail and LSEs exactly; log-probs within the quantisation bound; tokens/masks/labels verbatim."
    t, data = W.toy_teacher(), W.toy_data()
    ds = CachedLogitsDataset(ref)
    b = ds.read(np.arange(len(ds)))
    with torch.no_grad():
        logits = torch.cat([t(input_ids=torch.as_tensor(data['input_ids'][a:e]), attention_mask=torch.as_tensor(data['attention_mask'][a:e])).logits
                            for s in range(0, W.N, 4) for a in range(s, min(s + 4, W.N), 3) for e in [min(a + 3, s + 4)]])  # the generator's batches
    r = topk_targets(logits, 16, (1.0, 2.0))
    order = r['teacher_ids'].argsort(-1)
    assert torch.equal(b['teacher_ids'], r['teacher_ids'].gather(-1, order))
    assert torch.equal(b['teacher_tail_logprob'], r['teacher_tail_logprob'])
    assert torch.equal(b['teacher_lse'][..., 1], r['teacher_lse'][..., 1]) and (b['teacher_lse'][..., 0] == 0).all()  # T=1: 0 by definition
    with h5py.File(ref) as f: assert list(f['stats'].attrs['columns']) == ['top1_logprob', 'tail_logprob', 'lse_T=2']
    lp = r['teacher_logprobs'].gather(-1, order)
    d = (r['teacher_logprobs'][..., :1] - lp).numpy()
    bits, (d0, dmax) = 7, kc.VALUE_PRESETS[7]
    bound = kc.quant_error_bound(d, bits, d0, dmax) + kc.quant_error_bound(np.minimum(d, dmax), bits, d0, dmax).max(-1, keepdims=True)
    assert ((b['teacher_logprobs'] - lp).abs().numpy() <= bound + 1e-5).all()
    for k in ('input_ids', 'attention_mask', 'labels'): assert torch.equal(b[k], torch.as_tensor(data[k]))
    # the loss from the cache is within 0.2% of the loss from exact targets
    torch.manual_seed(0)
    student = logits + 0.5 * torch.randn_like(logits)
    kd_exact = distillation_loss(student, b['labels'], r, alpha=1.0, temperature=2.0).kd
    kd_cache = distillation_loss(student, b['labels'], b, alpha=1.0, temperature=2.0).kd
    assert abs(kd_cache - kd_exact) <= 2e-3 * kd_exact

def test_k_equals_vocab_is_exact(tmp_path):
    "k = V: no tail (-inf), and the dense reconstruction is the teacher's log-softmax (up to quantisation)."
    t, data = W.toy_teacher(vocab=50, layers=1), W.toy_data(n=2, seq_len=6, vocab=50)
    TeacherLogitsGenerator(t, W.ToyTokenizer(50), k=50, value_bits=8, progress=False).generate(data, tmp_path / 'c.h5')
    it = CachedLogitsDataset(tmp_path / 'c.h5')[1]
    assert torch.isneginf(it['teacher_tail_logprob']).all()
    with torch.no_grad(): ref = t(input_ids=torch.as_tensor(data['input_ids']), attention_mask=torch.as_tensor(data['attention_mask'])).logits[1].log_softmax(-1)
    dense = reconstruct_teacher_logits(it, 50)
    assert (dense.exp() - ref.exp()).abs().max() < 5e-3
    torch.testing.assert_close(dense.double().exp().sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)

@pytest.mark.parametrize('codec', ['gzip', 'lzf', 'zstd', 'none'])
def test_codecs_same_content(tmp_path, ref, codec):
    p = W.make_generator(codec=codec).generate(W.toy_data(), tmp_path / f'{codec}.h5')
    A, B = arrays(ref), arrays(p)
    for k in A: np.testing.assert_array_equal(A[k], B[k])
    with h5py.File(p) as f:
        assert f['ids'].chunks == (1, W.S, 16)  # one chunk per sequence
        if codec == 'gzip': assert f['ids'].compression == 'gzip' and f['ids'].shuffle

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

def test_sample_mode_reproducible_and_independent_of_batching(tmp_path):
    a = W.make_generator('sample').generate(W.toy_data(), tmp_path / 'a.h5')
    b = W.make_generator('sample', batch_size=7, segment_size=9).generate(W.toy_data(), tmp_path / 'b.h5')
    c = W.make_generator('sample', seed=6).generate(W.toy_data(), tmp_path / 'c.h5')
    A, B, C = arrays(a), arrays(b), arrays(c)
    np.testing.assert_array_equal(A['counts'], B['counts']); np.testing.assert_array_equal(A['ids'], B['ids'])
    assert not np.array_equal(A['counts'], C['counts'])
    ds = CachedLogitsDataset(a)
    it = ds.collate([ds[i] for i in range(5)])
    assert (it['teacher_counts'].sum(-1) == 20).all()
    assert torch.equal(it['teacher_temperatures'], torch.tensor([1.0]))
    assert 'teacher_lse' not in it and 'teacher_logprobs' not in it
    kept = it['teacher_counts'] > 0  # ids of filled slots are distinct and ascending; empty slots hold id 0
    ids = it['teacher_ids']
    assert (ids[~kept] == 0).all()
    assert ((ids[..., 1:] > ids[..., :-1]) | ~kept[..., 1:]).all()

# ---------------------------------------------------------------- crash safety: real SIGKILLs
def _kill_run(out, delay, sleep=0.05, mode='topk'):
    p = subprocess.Popen([sys.executable, str(HERE / 'test_cache_worker.py'), str(out), '--sleep', str(sleep), '--mode', mode],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while (line := p.stdout.readline()) and not line.startswith('READY'): pass
    try: p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL); p.wait()
        return False
    return p.returncode == 0

def _check_nothing_corrupt(out):
    parts = Path(str(out) + '.parts')
    if out.exists(): read_cache_metadata(out)  # a final file is always complete
    for seg in parts.glob('seg-*.h5'):  # every finished segment reads back
        m = read_cache_metadata(seg)
        with h5py.File(seg) as f: f['ids'][()]; f['input_ids'][()]
        assert m['n_sequences'] == int(seg.stem.split('-')[2]) - int(seg.stem.split('-')[1])

@pytest.mark.parametrize('mode', ['topk', 'sample'])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, mode):
    ref = W.make_generator(mode).generate(W.toy_data(), tmp_path / 'ref.h5')
    out = tmp_path / 'killed.h5'
    rng = np.random.default_rng(0 if mode == 'topk' else 1)
    kills, n_segs = 0, []
    for attempt in range(3 if mode == 'topk' else 2):  # kill at random moments: during imports, forwards, segment writes, the merge
        if _kill_run(out, float(rng.uniform(0.0, 1.5)), mode=mode): break
        kills += 1
        _check_nothing_corrupt(out)
        n_segs.append(len(list(Path(str(out) + '.parts').glob('seg-*.h5'))))
    assert kills >= 1
    W.make_generator(mode).generate(W.toy_data(), out)  # resume in this process
    assert_same_cache(ref, out)
    assert not Path(str(out) + '.parts').exists() and not Path(str(out) + '.tmp').exists()
    assert any(n > 0 for n in n_segs), f'no kill landed after a segment was written ({n_segs})'

def test_kill_during_merge_is_safe(tmp_path, ref, monkeypatch):
    "A failure half-way through the merge leaves the parts intact and no final file; resume finishes."
    out = tmp_path / 'c.h5'
    gen = W.make_generator()
    real = kc.TeacherLogitsGenerator._merge
    def boom(self, path, parts, segs):
        with h5py.File(path.with_name(path.name + '.tmp'), 'w') as f: f['half'] = [1]
        raise KeyboardInterrupt
    monkeypatch.setattr(kc.TeacherLogitsGenerator, '_merge', boom)
    with pytest.raises(KeyboardInterrupt): gen.generate(W.toy_data(), out)
    assert not out.exists() and len(list(Path(str(out) + '.parts').glob('seg-*.h5'))) == 10
    monkeypatch.setattr(kc.TeacherLogitsGenerator, '_merge', real)
    forwards = []
    gen.teacher.register_forward_hook(lambda *a: forwards.append(1))
    gen.generate(W.toy_data(), out)
    assert forwards == []  # nothing recomputed
    assert_same_cache(ref, out)

def test_resume_refuses_parts_of_another_run(tmp_path):
    out = tmp_path / 'c.h5'
    parts = Path(str(out) + '.parts'); parts.mkdir()
    run = json.loads(json.dumps({k: 0 for k in kc.RUN_KEYS}))
    (parts / 'run.json').write_text(json.dumps(run))
    with pytest.raises(CacheError, match='parts of a different run'): W.make_generator().generate(W.toy_data(), out)
    assert (parts / 'run.json').read_text() == json.dumps(run)  # untouched
    W.make_generator().generate(W.toy_data(), out, resume=False)  # explicit restart discards them
    assert out.exists() and not parts.exists()

# ---------------------------------------------------------------- several processes
def test_torchrun_two_ranks_equal_single_process(tmp_path, ref):
    out = tmp_path / 'dist.h5'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(HERE / 'test_cache_worker.py'), str(out), '--dist'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'DONE 0' in r.stdout and 'DONE 1' in r.stdout
    assert_same_cache(ref, out)

def test_shards_read_as_one_dataset(tmp_path, ref):
    "Two caches of the two halves of the data, read as a list, equal the cache of the whole."
    data = W.toy_data()
    half = {k: v[:20] for k, v in data.items()}, {k: v[20:] for k, v in data.items()}
    a = W.make_generator().generate(half[0], tmp_path / 'a.h5')
    b = W.make_generator().generate(half[1], tmp_path / 'b.h5')
    one, two = CachedLogitsDataset(ref), CachedLogitsDataset([a, b])
    assert len(two) == len(one) == W.N
    idx = [39, 0, 21, 19, 20, 5]
    x, y = one.read(idx), two.read(idx)
    for k in x: assert torch.equal(x[k], y[k]), k

def test_chunking_does_not_change_the_cache(tmp_path, ref):
    "Chunks of whole sequences (the default), one sequence, or parts of one give the same targets."
    full = CachedLogitsDataset(ref).read(np.arange(W.N))
    for cs in (W.S, 7):
        p = W.make_generator(chunk_size=cs).generate(W.toy_data(), tmp_path / f'c{cs}.h5')
        got = CachedLogitsDataset(p).read(np.arange(W.N))
        assert torch.equal(got['teacher_ids'], full['teacher_ids']), cs
        torch.testing.assert_close(got['teacher_logprobs'], full['teacher_logprobs'], atol=1e-4, rtol=0)
        torch.testing.assert_close(got['teacher_tail_logprob'], full['teacher_tail_logprob'], atol=1e-5, rtol=0)
        torch.testing.assert_close(got['teacher_lse'], full['teacher_lse'], atol=1e-5, rtol=0)

# ---------------------------------------------------------------- reading
def test_dataloader_two_workers(ref):
    ds = CachedLogitsDataset(ref)
    ds[0]  # a handle opened in the parent must not leak into the workers
    dl = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True, num_workers=2, collate_fn=ds.collate,
                                     generator=torch.Generator().manual_seed(0))
    seen = []
    for b in dl:
        assert b['teacher_temperatures'].shape == (2,) and b['teacher_ids'].shape[1:] == (W.S, 16)
        direct = ds.read(b['input_ids'].new_tensor([0]).new_tensor([]).tolist() or [0])
        seen.append(b)
    allb = {k: torch.cat([b[k] for b in seen]) for k in seen[0] if k != 'teacher_temperatures'}
    assert allb['input_ids'].shape[0] == W.N
    # every row equals a direct read of the same row (rows are identified by their tokens)
    full = ds.read(np.arange(W.N))
    pos = {tuple(r.tolist()): i for i, r in enumerate(full['input_ids'])}
    for j, r in enumerate(allb['input_ids']):
        i = pos[tuple(r.tolist())]
        for k in allb: assert torch.equal(allb[k][j], full[k][i]), k

def test_collate_keeps_one_temperature_vector(ref):
    ds = CachedLogitsDataset(ref, temperatures=[2.0])
    b = collate_teacher_batch([ds[3], ds[1]])
    assert b['teacher_temperatures'].tolist() == [2.0] and b['teacher_lse'].shape == (2, W.S, 1)
    assert torch.equal(b['teacher_lse'][0, :, 0], CachedLogitsDataset(ref)[3]['teacher_lse'][:, 1])
    it = ds[0]; it['teacher_temperatures'] = torch.tensor([1.0])
    with pytest.raises(CacheError, match='different teacher_temperatures'): collate_teacher_batch([ds[1], it])

def test_trainer_sees_teacher_fields_with_the_collator(ref, tmp_path):
    "With data_collator=collate_teacher_batch and remove_unused_columns=False the teacher fields reach compute_loss; with the default they are dropped."
    from transformers import Trainer, TrainingArguments
    ds = CachedLogitsDataset(ref)
    seen = {}
    class T(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.setdefault(self.args.remove_unused_columns, set(inputs))
            targets = {k: v for k, v in inputs.items() if k.startswith('teacher_')}
            logits = model(input_ids=inputs['input_ids'], attention_mask=inputs['attention_mask']).logits
            if not targets: return logits.sum() * 0
            return distillation_loss(logits, inputs['labels'], targets, num_items_in_batch=num_items_in_batch).loss
    for remove in (False, True):
        args = TrainingArguments(output_dir=str(tmp_path / str(remove)), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                                 report_to=[], remove_unused_columns=remove, save_strategy='no', logging_strategy='no')
        T(model=W.toy_teacher(), args=args, train_dataset=ds, data_collator=collate_teacher_batch).train()
    assert {'teacher_ids', 'teacher_logprobs', 'teacher_tail_logprob', 'teacher_lse', 'teacher_temperatures'} <= seen[False]
    assert not any(k.startswith('teacher_') for k in seen[True])  # what remove_unused_columns=True does

# ---------------------------------------------------------------- bad input: clear errors, nothing touched
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

def test_bad_compatibility(ref):
    ds = CachedLogitsDataset(ref)
    with pytest.raises(CacheError, match=r'ref.h5: tokenizer fingerprint differs'): ds.check_compatible(tokenizer=W.ToyTokenizer(301))
    with pytest.raises(CacheError, match=r'ref.h5: the student.s output layer has 200 rows, narrower than .* 300'): ds.check_compatible(model=W.toy_teacher(vocab=200, layers=1))
    with pytest.raises(CacheError, match=r'ref.h5: seq_len 32 differs from the cache.s seq_len 24'): ds.check_compatible(seq_len=32)
    assert ds.check_compatible(tokenizer=W.ToyTokenizer(), model=W.toy_teacher(vocab=320, layers=1), seq_len=W.S)  # a padded student is fine
    with pytest.raises(CacheError, match=r'temperatures \[3.0\] are not in the cache'): CachedLogitsDataset(ref, temperatures=[3.0])

def test_bad_generator_input(tmp_path, ref):
    t, tok = W.toy_teacher(), W.ToyTokenizer()
    with pytest.raises(ValueError, match='k=301 must be in'): TeacherLogitsGenerator(t, tok, k=301)
    with pytest.raises(CacheError, match='teacher output width 300 is narrower than the tokenizer vocabulary 400'): TeacherLogitsGenerator(t, W.ToyTokenizer(400))
    with pytest.raises(ValueError, match="mode='dense'"): TeacherLogitsGenerator(t, tok, mode='dense')
    with pytest.raises(ValueError, match='one capture temperature'): TeacherLogitsGenerator(t, tok, mode='sample', temperatures=(1.0, 2.0))
    with pytest.raises(ValueError, match="codec='brotli'"): TeacherLogitsGenerator(t, tok, codec='brotli')
    gen = TeacherLogitsGenerator(t, tok, k=8, progress=False)
    with pytest.raises(CacheError, match='no `input_ids`'): gen.generate({'text': ['a']}, tmp_path / 'x.h5')
    with pytest.raises(CacheError, match='different lengths'): gen.generate([{'input_ids': [1, 2, 3]}, {'input_ids': [1, 2]}], tmp_path / 'x.h5')
    bad = W.toy_data(n=2, seq_len=5); bad['input_ids'][1, 2] = 300
    with pytest.raises(CacheError, match=r'token ids outside \[0, 300\)'): gen.generate(bad, tmp_path / 'x.h5')
    assert not (tmp_path / 'x.h5').exists()

def test_existing_cache_is_never_touched(tmp_path, ref):
    p = tmp_path / 'c.h5'; shutil.copy(ref, p)
    before, mtime = sha(p), p.stat().st_mtime_ns
    # a dataset of another seq_len, other k, other data: clear errors naming the file and the mismatch
    with pytest.raises(CacheError, match=r'c.h5 exists and holds a different cache \(.*seq_len: 24 != 12'):
        W.make_generator().generate(W.toy_data(seq_len=12), p)
    with pytest.raises(CacheError, match=r'k: 16 != 8'): W.make_generator(k=8).generate(W.toy_data(), p)
    with pytest.raises(CacheError, match='dataset_fingerprint'): W.make_generator().generate(W.toy_data(seed=1), p)
    with pytest.raises(CacheError, match='the same cache'): W.make_generator().generate(W.toy_data(), p, resume=False)
    assert W.make_generator().generate(W.toy_data(), p) == p  # identical and resume=True: nothing to do
    assert sha(p) == before and p.stat().st_mtime_ns == mtime
    assert not Path(str(p) + '.parts').exists()
    (tmp_path / 'junk.h5').write_text('junk')
    with pytest.raises(CacheError, match='junk.h5 exists and is not a finished kdkit cache'): W.make_generator().generate(W.toy_data(), tmp_path / 'junk.h5')
    assert (tmp_path / 'junk.h5').read_text() == 'junk'
    W.make_generator(k=8).generate(W.toy_data(), p, overwrite=True)  # explicit
    assert read_cache_metadata(p)['k'] == 8

# ---------------------------------------------------------------- CLI
def _run_cli(argv, capsys):
    from kdkit.cli import main
    rc = main(argv)
    return rc, capsys.readouterr().out

@pytest.fixture(scope='module')
def hf_teacher(tmp_path_factory):
    "A saved tiny Llama + a trained BPE tokenizer, and a text file: a real `kdkit cache` input."
    from kdkit.data import train_demo_tokenizer, demo_corpus
    d = tmp_path_factory.mktemp('teacher')
    tok = train_demo_tokenizer(demo_corpus(200, seed=0), vocab_size=300)
    t = W.toy_teacher(vocab=len(tok), layers=1)
    t.save_pretrained(d / 'model'); tok.save_pretrained(d / 'model')
    (d / 'corpus.txt').write_text('\n'.join(demo_corpus(60, seed=1)))
    return d

def test_cli_cache_and_inspect(hf_teacher, capsys, tmp_path):
    import kdkit.cache  # registers the commands
    out = tmp_path / 'cli.h5'
    rc, text = _run_cli(['cache', '--teacher', str(hf_teacher / 'model'), '--data', str(hf_teacher / 'corpus.txt'), '--out', str(out),
                         '--k', '8', '--temperatures', '1', '2', '--seq-len', '32', '--batch-size', '4', '--limit', '6'], capsys)
    assert rc == 0 and out.exists() and 'B/entry' in text
    m = read_cache_metadata(out)
    assert (m['k'], m['seq_len'], m['n_sequences'], m['temperatures']) == (8, 32, 6, [1.0, 2.0])
    from transformers import AutoTokenizer
    CachedLogitsDataset(out).check_compatible(tokenizer=AutoTokenizer.from_pretrained(hf_teacher / 'model'), seq_len=32)
    rc, text = _run_cli(['inspect', str(out), '--tokenizer', str(hf_teacher / 'model'), '--n-tokens', '3'], capsys)
    assert rc == 0 and 'rows 6, tokens 192' in text and 'mean teacher mass covered by the top-8' in text and '->' in text
    rc, text = _run_cli(['inspect', str(out), '--json'], capsys)
    assert json.loads(text)['rows'] == 6
    rc, text = _run_cli(['inspect', str(tmp_path / 'nope.h5')], capsys)
    assert rc == 2 and 'nope.h5: no such cache file' in text

def test_cli_help_documents_every_flag(capsys):
    import kdkit.cache
    from kdkit.cli import build_parser
    p = build_parser()
    assert 'cache' in p.format_help() and 'inspect' in p.format_help()
    sub = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction')
    for name in ('cache', 'inspect'):
        sp = sub.choices[name]
        for a in sp._actions:
            if a.dest not in ('help',): assert a.help, f'kdkit {name}: flag {a.option_strings or a.dest} has no help'
        h = sp.format_help()
        for flag in ('--teacher', '--data', '--out', '--k', '--mode', '--temperatures', '--seq-len', '--batch-size', '--no-resume') if name == 'cache' else ('--row', '--tokenizer'):
            assert flag in h

# ---------------------------------------------------------------- the real teacher
@pytest.mark.slow
def test_smollm2_cache_real_text(tmp_path):
    from kdkit.data import stdlib_text, prepare_dataset
    from kdkit.models import load_smollm2
    model, tok = load_smollm2()
    data = prepare_dataset(stdlib_text(max_docs=40), tok, seq_len=64).select(range(8))
    p = TeacherLogitsGenerator(model, tok, k=64, batch_size=4, progress=False).generate(data, tmp_path / 's.h5')
    ds = CachedLogitsDataset(p)
    ds.check_compatible(tokenizer=tok, model=model, seq_len=64)
    b = ds.read(range(4))
    with torch.no_grad(): logits = model(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits
    r = topk_targets(logits, 64)
    assert torch.equal(b['teacher_ids'], r['teacher_ids'].sort(-1).values)
    torch.testing.assert_close(b['teacher_tail_logprob'], r['teacher_tail_logprob'], atol=1e-4, rtol=0)
    info = kc.inspect_cache(p, tokenizer=tok)
    assert info['mean_topk_mass'] > 0.5 and info['bytes_per_entry'] < 4

# ---------------------------------------------------------------- memory and dtypes
def test_no_full_logits_when_lm_head_is_plain(tmp_path):
    "The generator runs the decoder and applies the lm_head per chunk: the model's forward (and its [B,S,V] logits) never run."
    t = W.toy_teacher()
    calls = []
    t.register_forward_hook(lambda *a: calls.append('model'))
    t.get_decoder().register_forward_hook(lambda *a: calls.append('decoder'))
    TeacherLogitsGenerator(t, W.ToyTokenizer(), k=8, batch_size=4, chunk_size=5, progress=False).generate(W.toy_data(n=8), tmp_path / 'c.h5')
    assert 'model' not in calls and calls.count('decoder') == 2
    t.config.final_logit_softcapping = 30.0  # not a plain linear map: the model's own logits are used
    calls.clear()
    TeacherLogitsGenerator(t, W.ToyTokenizer(), k=8, batch_size=4, progress=False).generate(W.toy_data(n=8), tmp_path / 'd.h5')
    assert calls.count('model') == 2

def test_bf16_teacher(tmp_path):
    t = W.toy_teacher().to(torch.bfloat16)
    data = W.toy_data(n=4)
    p = TeacherLogitsGenerator(t, W.ToyTokenizer(), k=16, batch_size=4, progress=False).generate(data, tmp_path / 'c.h5')
    b = CachedLogitsDataset(p).read(range(4))
    with torch.no_grad(): logits = t(input_ids=torch.as_tensor(data['input_ids']), attention_mask=torch.as_tensor(data['attention_mask'])).logits
    r = topk_targets(logits, 16)
    assert logits.dtype == torch.bfloat16 and b['teacher_logprobs'].dtype == torch.float32
    same = (b['teacher_ids'] == r['teacher_ids'].sort(-1).values).all(-1)
    assert same.float().mean() > 0.95  # bf16 matmuls in chunks may break near-ties differently
    torch.testing.assert_close(b['teacher_tail_logprob'][same], r['teacher_tail_logprob'][same], atol=1e-5, rtol=0)
