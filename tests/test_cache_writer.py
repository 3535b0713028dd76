"""TeacherLogitsGenerator: targets equal topk_targets, codecs, sample mode, real SIGKILLs then resume, torchrun sharding,
chunking, bad input, what it never touches, memory and dtypes."""
import os, sys, json, shutil, signal, subprocess, hashlib, time
from pathlib import Path
import numpy as np
import pytest
import torch
import h5py

import kdkit.cache_writer as cw
from kdkit.cache import TeacherLogitsGenerator, CachedLogitsDataset, CacheError, reconstruct_teacher_logits, read_cache_metadata, inspect_cache
from kdkit.cache_format import VALUE_PRESETS, RUN_KEYS, quant_error_bound
from kdkit.losses import topk_targets, distillation_loss
import cache_worker as W
from cache_worker import arrays, assert_same_cache

HERE, ENV = W.HERE, W.ENV
torch.set_num_threads(1)

def sha(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()

def test_17bit_vocab_through_file(tmp_path):
    "A 70,000-token teacher: ids above 65,535 survive the file (17-bit packing)."
    V = 70000
    t = W.tiny_llama(V, layers=1)
    with torch.no_grad(): t.lm_head.weight[65536:] += 0.5  # put high ids into the top-k
    data = W.toy_blocks(n=3, seq_len=8, vocab=V)
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
    t, data = W.tiny_llama(), W.toy_blocks()
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
    bits, (d0, dmax) = 7, VALUE_PRESETS[7]
    bound = quant_error_bound(d, bits, d0, dmax) + quant_error_bound(np.minimum(d, dmax), bits, d0, dmax).max(-1, keepdims=True)
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
    t, data = W.tiny_llama(vocab=50, layers=1), W.toy_blocks(n=2, seq_len=6, vocab=50)
    TeacherLogitsGenerator(t, W.ToyTokenizer(50), k=50, value_bits=8, progress=False).generate(data, tmp_path / 'c.h5')
    it = CachedLogitsDataset(tmp_path / 'c.h5')[1]
    assert torch.isneginf(it['teacher_tail_logprob']).all()
    with torch.no_grad(): ref = t(input_ids=torch.as_tensor(data['input_ids']), attention_mask=torch.as_tensor(data['attention_mask'])).logits[1].log_softmax(-1)
    dense = reconstruct_teacher_logits(it, 50)
    assert (dense.exp() - ref.exp()).abs().max() < 5e-3
    torch.testing.assert_close(dense.double().exp().sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize('codec', ['gzip', 'lzf', 'zstd', 'none'])
def test_codecs_same_content(tmp_path, ref, codec):
    p = W.make_generator(codec=codec).generate(W.toy_blocks(), tmp_path / f'{codec}.h5')
    A, B = arrays(ref), arrays(p)
    for k in A: np.testing.assert_array_equal(A[k], B[k])
    with h5py.File(p) as f:
        assert f['ids'].chunks == (1, W.S, 16)  # one chunk per sequence
        if codec == 'gzip': assert f['ids'].compression == 'gzip' and f['ids'].shuffle


def test_sample_mode_reproducible_and_independent_of_batching(tmp_path):
    a = W.make_generator('sample').generate(W.toy_blocks(), tmp_path / 'a.h5')
    b = W.make_generator('sample', batch_size=7, segment_size=9).generate(W.toy_blocks(), tmp_path / 'b.h5')
    c = W.make_generator('sample', seed=6).generate(W.toy_blocks(), tmp_path / 'c.h5')
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


def _kill_run(out, delay, sleep=0.05, mode='topk'):
    p = subprocess.Popen([sys.executable, str(HERE / 'cache_worker.py'), str(out), '--sleep', str(sleep), '--mode', mode],
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
    ref = W.make_generator(mode).generate(W.toy_blocks(), tmp_path / 'ref.h5')
    out = tmp_path / 'killed.h5'
    rng = np.random.default_rng(0 if mode == 'topk' else 1)
    kills, n_segs = 0, []
    for attempt in range(3 if mode == 'topk' else 2):  # kill at random moments: during imports, forwards, segment writes, the merge
        if _kill_run(out, float(rng.uniform(0.0, 1.5)), mode=mode): break
        kills += 1
        _check_nothing_corrupt(out)
        n_segs.append(len(list(Path(str(out) + '.parts').glob('seg-*.h5'))))
    assert kills >= 1
    W.make_generator(mode).generate(W.toy_blocks(), out)  # resume in this process
    assert_same_cache(ref, out)
    assert not Path(str(out) + '.parts').exists() and not Path(str(out) + '.tmp').exists()
    assert any(n > 0 for n in n_segs), f'no kill landed after a segment was written ({n_segs})'


def test_kill_during_merge_is_safe(tmp_path, ref, monkeypatch):
    "A failure half-way through the merge leaves the parts intact and no final file; resume finishes."
    out = tmp_path / 'c.h5'
    gen = W.make_generator()
    def boom(path, parts, segs, meta, merged=None):
        with h5py.File(path.with_name(path.name + '.tmp'), 'w') as f: f['half'] = [1]
        raise KeyboardInterrupt
    monkeypatch.setattr(cw, '_merge_segments', boom)
    with pytest.raises(KeyboardInterrupt): gen.generate(W.toy_blocks(), out)
    assert not out.exists() and len(list(Path(str(out) + '.parts').glob('seg-*.h5'))) == 10
    monkeypatch.undo()
    forwards = []
    gen.teacher.register_forward_hook(lambda *a: forwards.append(1))
    gen.generate(W.toy_blocks(), out)
    assert forwards == []  # nothing recomputed
    assert_same_cache(ref, out)


def test_resume_refuses_parts_of_another_run(tmp_path):
    out = tmp_path / 'c.h5'
    parts = Path(str(out) + '.parts'); parts.mkdir()
    run = json.loads(json.dumps({k: 0 for k in RUN_KEYS}))
    (parts / 'run.json').write_text(json.dumps(run))
    with pytest.raises(CacheError, match='parts of a different run'): W.make_generator().generate(W.toy_blocks(), out)
    assert (parts / 'run.json').read_text() == json.dumps(run)  # untouched
    W.make_generator().generate(W.toy_blocks(), out, resume=False)  # explicit restart discards them
    assert out.exists() and not parts.exists()


def test_torchrun_two_ranks_equal_single_process(tmp_path, ref):
    out = tmp_path / 'dist.h5'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(HERE / 'cache_worker.py'), str(out), '--dist'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0 and r.stdout.count('DONE') == 2, r.stdout  # two ranks' lines may interleave
    assert_same_cache(ref, out)


def test_chunking_does_not_change_the_cache(tmp_path, ref):
    "Chunks of whole sequences (the default), one sequence, or parts of one give the same targets."
    full = CachedLogitsDataset(ref).read(np.arange(W.N))
    for cs in (W.S, 7):
        p = W.make_generator(chunk_size=cs).generate(W.toy_blocks(), tmp_path / f'c{cs}.h5')
        got = CachedLogitsDataset(p).read(np.arange(W.N))
        assert torch.equal(got['teacher_ids'], full['teacher_ids']), cs
        torch.testing.assert_close(got['teacher_logprobs'], full['teacher_logprobs'], atol=1e-4, rtol=0)
        torch.testing.assert_close(got['teacher_tail_logprob'], full['teacher_tail_logprob'], atol=1e-5, rtol=0)
        torch.testing.assert_close(got['teacher_lse'], full['teacher_lse'], atol=1e-5, rtol=0)


def test_bad_generator_input(tmp_path, ref):
    t, tok = W.tiny_llama(), W.ToyTokenizer()
    with pytest.raises(ValueError, match='k=301 must be in'): TeacherLogitsGenerator(t, tok, k=301)
    with pytest.raises(CacheError, match='teacher output width 300 is narrower than the tokenizer vocabulary 400'): TeacherLogitsGenerator(t, W.ToyTokenizer(400))
    with pytest.raises(ValueError, match="mode='dense'"): TeacherLogitsGenerator(t, tok, mode='dense')
    with pytest.raises(ValueError, match='one capture temperature'): TeacherLogitsGenerator(t, tok, mode='sample', temperatures=(1.0, 2.0))
    with pytest.raises(ValueError, match="codec='brotli'"): TeacherLogitsGenerator(t, tok, codec='brotli')
    gen = TeacherLogitsGenerator(t, tok, k=8, progress=False)
    with pytest.raises(CacheError, match='no `input_ids`'): gen.generate({'text': ['a']}, tmp_path / 'x.h5')
    with pytest.raises(CacheError, match='different lengths'): gen.generate([{'input_ids': [1, 2, 3]}, {'input_ids': [1, 2]}], tmp_path / 'x.h5')
    bad = W.toy_blocks(n=2, seq_len=5); bad['input_ids'][1, 2] = 300
    with pytest.raises(CacheError, match=r'token ids outside \[0, 300\)'): gen.generate(bad, tmp_path / 'x.h5')
    assert not (tmp_path / 'x.h5').exists()


def test_existing_cache_is_never_touched(tmp_path, ref):
    p = tmp_path / 'c.h5'; shutil.copy(ref, p)
    before, mtime = sha(p), p.stat().st_mtime_ns
    # a dataset of another seq_len, other k, other data: clear errors naming the file and the mismatch
    with pytest.raises(CacheError, match=r'c.h5 exists and holds a different cache \(.*seq_len: 24 != 12'):
        W.make_generator().generate(W.toy_blocks(seq_len=12), p)
    with pytest.raises(CacheError, match=r'k: 16 != 8'): W.make_generator(k=8).generate(W.toy_blocks(), p)
    with pytest.raises(CacheError, match='dataset_fingerprint'): W.make_generator().generate(W.toy_blocks(seed=1), p)
    with pytest.raises(CacheError, match='the same cache'): W.make_generator().generate(W.toy_blocks(), p, resume=False)
    assert W.make_generator().generate(W.toy_blocks(), p) == p  # identical and resume=True: nothing to do
    assert sha(p) == before and p.stat().st_mtime_ns == mtime
    assert not Path(str(p) + '.parts').exists()
    (tmp_path / 'junk.h5').write_text('junk')
    with pytest.raises(CacheError, match='junk.h5 exists and is not a finished kdkit cache'): W.make_generator().generate(W.toy_blocks(), tmp_path / 'junk.h5')
    assert (tmp_path / 'junk.h5').read_text() == 'junk'
    W.make_generator(k=8).generate(W.toy_blocks(), p, overwrite=True)  # explicit
    assert read_cache_metadata(p)['k'] == 8


def test_no_full_logits_when_lm_head_is_plain(tmp_path):
    "The generator runs the decoder and applies the lm_head per chunk: the model's forward (and its [B,S,V] logits) never run."
    t = W.tiny_llama()
    calls = []
    t.register_forward_hook(lambda *a: calls.append('model'))
    t.get_decoder().register_forward_hook(lambda *a: calls.append('decoder'))
    TeacherLogitsGenerator(t, W.ToyTokenizer(), k=8, batch_size=4, chunk_size=5, progress=False).generate(W.toy_blocks(n=8), tmp_path / 'c.h5')
    assert 'model' not in calls and calls.count('decoder') == 2
    t.config.final_logit_softcapping = 30.0  # not a plain linear map: the model's own logits are used
    calls.clear()
    TeacherLogitsGenerator(t, W.ToyTokenizer(), k=8, batch_size=4, progress=False).generate(W.toy_blocks(n=8), tmp_path / 'd.h5')
    assert calls.count('model') == 2


def test_bf16_teacher(tmp_path):
    t = W.tiny_llama().to(torch.bfloat16)
    data = W.toy_blocks(n=4)
    p = TeacherLogitsGenerator(t, W.ToyTokenizer(), k=16, batch_size=4, progress=False).generate(data, tmp_path / 'c.h5')
    b = CachedLogitsDataset(p).read(range(4))
    with torch.no_grad(): logits = t(input_ids=torch.as_tensor(data['input_ids']), attention_mask=torch.as_tensor(data['attention_mask'])).logits
    r = topk_targets(logits, 16)
    assert logits.dtype == torch.bfloat16 and b['teacher_logprobs'].dtype == torch.float32
    same = (b['teacher_ids'] == r['teacher_ids'].sort(-1).values).all(-1)
    assert same.float().mean() > 0.95  # bf16 matmuls in chunks may break near-ties differently
    torch.testing.assert_close(b['teacher_tail_logprob'][same], r['teacher_tail_logprob'][same], atol=1e-5, rtol=0)


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
    info = inspect_cache(p, tokenizer=tok)
    assert info['mean_topk_mass'] > 0.5 and info['bytes_per_entry'] < 4

# ---------------------------------------------------------------- one writer at a time
def _start_worker(out, *args):
    return subprocess.Popen([sys.executable, str(HERE / 'cache_worker.py'), str(out), *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def test_second_writer_is_refused_and_never_touches_the_first(tmp_path, ref):
    "While a writer runs, a second one (resume, restart or overwrite) gets a CacheError; the first finishes an identical cache."
    out = tmp_path / 'c.h5'
    p = _start_worker(out, '--sleep', '0.1')
    lock = Path(str(out) + '.lock')
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().startswith('process')):  # locked (the holder writes its pid after flock)
        assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else 'no lock'
        time.sleep(0.02)
    for kw in ({}, dict(resume=False), dict(overwrite=True)):
        with pytest.raises(CacheError, match=r'c.h5 is being written by process \d+ \(it holds c.h5.lock\)'):
            W.make_generator().generate(W.toy_blocks(), out, **kw)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    assert_same_cache(ref, out)
    assert not lock.exists() and not Path(str(out) + '.parts').exists()

def test_two_writers_started_together(tmp_path, ref):
    "Two runs on one output at the same moment: one writes, the other is refused or finds the finished cache; never a mixed file."
    out = tmp_path / 'c.h5'
    ps = [_start_worker(out, '--sleep', '0.02') for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in ps]
    assert any(rc == 0 for rc, _ in results), results
    for rc, err in results: assert rc == 0 or 'is being written by process' in err, err[-2000:]
    assert_same_cache(ref, out)

# ---------------------------------------------------------------- a broken teacher
@pytest.mark.parametrize('mode', ['topk', 'sample'])
def test_nan_teacher_is_refused_naming_the_sequence(tmp_path, mode):
    "A NaN in the teacher's output stops the run at its sequence and position; finished segments stay; a fixed teacher resumes."
    t = W.tiny_llama()
    data = W.toy_blocks()
    data['input_ids'][data['input_ids'] == 299] = 298
    data['input_ids'][9, 5] = 299  # only sequence 9 holds token 299
    with torch.no_grad(): t.model.embed_tokens.weight[299] = float('nan')
    out = tmp_path / 'c.h5'
    with pytest.raises(CacheError, match=r'sequence 9 \(position \d+\) is not finite'): W.make_generator(mode, teacher=t).generate(data, out)
    parts = Path(str(out) + '.parts')
    assert not out.exists() and sorted(p.name for p in parts.glob('seg-*.h5')) == ['seg-000000000-000000004.h5', 'seg-000000004-000000008.h5']
    with torch.no_grad(): t.model.embed_tokens.weight[299] = 0.
    W.make_generator(mode, teacher=t).generate(data, out)
    assert len(CachedLogitsDataset(out)) == W.N

# ---------------------------------------------------------------- ranks left alone: bounded waits
def test_lone_rank_fails_naming_the_missing_rank(tmp_path, ref, monkeypatch):
    "RANK=1 without rank 0, or rank 0 without rank 1, ends in a CacheError within the timeout; a later full run resumes."
    out = tmp_path / 'c.h5'
    monkeypatch.setenv('WORLD_SIZE', '2'); monkeypatch.setenv('RANK', '1')
    with pytest.raises(CacheError, match=r'waited 0.5 s for rank 0 to prepare .*run.json'): W.make_generator(wait_timeout=0.5).generate(W.toy_blocks(), out)
    monkeypatch.setenv('RANK', '0')
    t0 = time.monotonic()
    with pytest.raises(CacheError, match=r'waited 0.5 s for the segments seg-000000004-000000008.h5 \(rank 1\)'):
        W.make_generator(wait_timeout=0.5).generate(W.toy_blocks(), out)
    assert time.monotonic() - t0 < 60 and not out.exists()
    monkeypatch.setenv('WORLD_SIZE', '1')
    W.make_generator().generate(W.toy_blocks(), out)  # the segments rank 0 wrote are reused
    assert_same_cache(ref, out)

# ---------------------------------------------------------------- disk space
@pytest.fixture
def small_disk(tmp_path):
    "A 192 kB tmpfs mounted for the test (skipped where mounting is not permitted)."
    mnt = tmp_path / 'mnt'; mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=192k', 'tmpfs', str(mnt)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root or CAP_SYS_ADMIN')
    yield mnt
    subprocess.run(['umount', '-l', str(mnt)])

def test_projected_size_refused_when_the_disk_cannot_hold_it(small_disk, capsys):
    gen = W.make_generator(progress=True)
    with pytest.raises(CacheError, match=r"c.h5: not enough disk space: the cache's projected size is [\d.]+ MB .* MB are free"):
        gen.generate(W.toy_blocks(n=400), small_disk / 'c.h5')
    assert 'projected size' in capsys.readouterr().out
    assert not list(small_disk.glob('c.h5.parts/seg-*'))

def test_full_disk_during_the_run_is_a_clear_error(small_disk, monkeypatch, tmp_path, ref):
    "The projection passes but the disk fills: a CacheError, no crash, nothing half-written kept; more space, and it resumes."
    import kdkit.cache_writer as cw
    monkeypatch.setattr(cw, 'check_disk_space', lambda *a: 0)
    (small_disk / 'filler').write_bytes(b'\0' * (140 << 10))
    out = small_disk / 'c.h5'
    with pytest.raises(CacheError, match=r'(cannot write the segment|merging needs|cannot write the merged cache).*(No space|free)'):
        W.make_generator().generate(W.toy_blocks(), out)
    assert not out.exists() and not list(small_disk.glob('**/*.tmp'))
    for seg in small_disk.glob('c.h5.parts/seg-*.h5'): read_cache_metadata(seg)  # what was kept is complete
    (small_disk / 'filler').unlink()
    shutil.copytree(small_disk / 'c.h5.parts', tmp_path / 'c.h5.parts')
    W.make_generator().generate(W.toy_blocks(), tmp_path / 'c.h5')
    assert_same_cache(ref, tmp_path / 'c.h5')


def test_pipelined_chunks_equal_hdf5s_own_filters(tmp_path, ref):
    """Chunks deflated in the worker pool (any number of workers) read back, through plain h5py with checksums verified,
    as the same arrays HDF5's own gzip + fletcher32 pipeline stores for the same targets."""
    from kdkit.cache_format import create_cache_datasets, encode_targets
    p = W.make_generator(workers=3).generate(W.toy_blocks(), tmp_path / 'w3.h5')
    A, B = arrays(ref), arrays(p)
    for k in A: np.testing.assert_array_equal(A[k], B[k])
    meta = read_cache_metadata(ref)
    t, data = W.tiny_llama(), W.toy_blocks()
    with torch.no_grad():
        logits = torch.cat([t(input_ids=torch.as_tensor(data['input_ids'][a:e]), attention_mask=torch.as_tensor(data['attention_mask'][a:e])).logits
                            for s in range(0, W.N, 4) for a in range(s, min(s + 4, W.N), 3) for e in [min(a + 3, s + 4)]])  # the generator's batches
    enc = encode_targets(topk_targets(logits, 16, (1.0, 2.0)), meta)
    with h5py.File(tmp_path / 'sync.h5', 'w') as f:  # the synchronous way: HDF5 deflates and checksums every chunk
        create_cache_datasets(f, W.N, meta)
        for k in ('input_ids', 'attention_mask', 'labels'): f[k][:] = data[k]
        for k, v in enc.items(): f[k][:] = v
    C = arrays(tmp_path / 'sync.h5')
    for k in ('input_ids', 'ids', 'codes'): np.testing.assert_array_equal(A[k], C[k])
    with h5py.File(ref) as f:
        mask, chunk = f['codes'].id.read_direct_chunk((0, 0, 0))
        assert mask == 0 and f['codes'].compression == 'gzip' and f['codes'].fletcher32
