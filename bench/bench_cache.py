"""Teacher-cache benchmarks: size, fidelity, writer overhead, reader throughput. Writes bench/results/cache.json.

Parts (run all, or some with --parts; figures of parts not run are kept from the previous file):
  size       bytes per stored entry (file bytes / (tokens x k)) at k=64, SmolLM2-135M over real English text
             (kdkit.data.stdlib_text), for every codec / value-width option, plus fp16 + uint16 ids as context.
             Targets: default codec <= 2.2, best option <= 2.0.
  synthetic  the same on a synthetic 128,256-token vocabulary (ids need 17 bits).
  fidelity   held-out tokens: mean KD (tail bucket, T=1) from the cache vs from the teacher's exact fp32 top-k, for the
             layer-pruned student, teacher + noise at 0.30 nats and at ~0.03 nats. Signed mean and mean per-token |diff|,
             relative to the exact mean. Target: |signed| <= 0.5% (0.30 nats and pruned student).
  overhead   TeacherLogitsGenerator.generate time / bare teacher forwards (same batches, process, dtype, threads),
             median of the ratios of 5 paired runs (bare and generate back to back). Target <= 1.15x.
  reader     tokens/s from CachedLogitsDataset through a DataLoader (2 workers, batch 16 x 128, shuffled) vs tokens/s the
             demo student trains at (batch 16 x 128, forward + distillation_loss + backward + AdamW), median of the
             ratios of 3 paired runs. Target >= 20x.

    python bench/bench_cache.py                                  # everything (about 10-20 min on 2 CPU cores)
    python bench/bench_cache.py --parts overhead,reader          # some parts

What the writer's and reader's design choices were measured to save (2-core AMD EPYC, torch 2.13 CPU):
  writer  - chunks of whole sequences: an lm_head over 128 rows was ~10% slower per row than over 256 or more;
          - topk_targets over sub-chunks of 32 rows: ~2x faster than 1,000-row chunks;
          - the tokenizer fingerprint once per generator (~0.15 s for a 49k vocabulary).
  reader  - dset[i] costs ~40 us of h5py selection work per call and read_direct_chunk ~7 us, more than inflating
            a small chunk: SequenceReader finds the chunks once with chunk_iter (~3 us a chunk) and inflates them
            from a memory map;
          - ISA-L's isal_zlib inflates ~1.7x faster than zlib (same output);
          - un-shuffling by OR-ing shifted byte planes is ~15x faster than a transpose;
          - torch's cumsum over short rows (the id deltas) is ~4x faster than numpy's;
          - a DataLoader worker sends every storage through its own shared-memory file, ~0.7 ms each, so a batch
            is decoded into views of one storage (allocating it in shared memory up front was slower: the copy
            then runs in the worker's main thread instead of its queue's feeder thread).
"""
import argparse, json, os, sys, tempfile, time, statistics, shutil
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
from bench.machine import machine
import h5py
import kdkit.cache as kc
from kdkit.cache import TeacherLogitsGenerator, CachedLogitsDataset, create_cache_datasets, encode_targets, decode_targets
from kdkit.losses import topk_targets, distillation_loss

RESULT = ROOT / 'bench' / 'results' / 'cache.json'  # --results changes it
FIGS = []

def fig(name, value, unit, target=None, note=None):
    "Record one figure (with the exact command line of this run) and print it."
    FIGS.append(dict(name=name, value=value, unit=unit, target=target, command=COMMAND, **({'note': note} if note else {})))
    print(f'  {name}: {value:.4g} {unit}' + (f'  (target {target})' if target else '') + (f'  [{note}]' if note else ''), flush=True)

class RecordingTeacher(torch.nn.Module):
    "A teacher that also keeps the exact fp32 top-k targets of every forward (for the codec variants and fidelity)."
    def __init__(self, m, k, V, keep_logits=False):
        super().__init__(); self.m, self.k, self.V, self.config, self.keep = m, k, V, m.config, keep_logits
        self.records, self.logits = [], []
    def get_output_embeddings(self): return self.m.get_output_embeddings()
    def forward(self, **kw):
        out = self.m(**kw)
        self.records.append({key: v.cpu() for key, v in topk_targets(out.logits[..., :self.V], self.k).items()})
        if self.keep: self.logits.append(out.logits[..., :self.V].float().cpu())
        return out

def cat_targets(recs):
    out = {key: torch.cat([r[key] for r in recs]) for key in recs[0] if key != 'teacher_temperatures'}
    out['teacher_temperatures'] = recs[0]['teacher_temperatures']
    return out

def write_variant(path, tokens, targets, meta, block=64):
    "A cache laid out by create_cache_datasets from exact targets, with `meta`'s codec and value width."
    n = tokens['input_ids'].shape[0]
    with h5py.File(path, 'w', libver=kc.LIBVER) as f:  # as the generator writes them
        create_cache_datasets(f, n, meta)
        for a in range(0, n, block):
            b = min(a + block, n)
            enc = encode_targets({key: (v[a:b] if v.ndim > 1 else v) for key, v in targets.items()}, meta)
            for key in ('input_ids', 'attention_mask', 'labels'): f[key][a:b] = tokens[key][a:b]
            for key, v in enc.items(): f[key][a:b] = v
    return os.path.getsize(path)

def variant_meta(meta, codec, bits):
    d0, dmax = kc.VALUE_PRESETS[bits]
    return dict(meta, codec=codec, quant_bits=bits, quant_d0=d0, quant_dmax=dmax)

def baseline_fp16_uint16(path, tokens, targets):
    "Context: fp16 log-probs + uint16 ids in probability order + fp32 tail, gzip-9 + shuffle, one chunk per sequence."
    kw = dict(compression='gzip', compression_opts=9, shuffle=True)
    with h5py.File(path, 'w', libver=kc.LIBVER) as f:
        for key, v in [('input_ids', tokens['input_ids'].astype(np.uint16)), ('attention_mask', tokens['attention_mask'].astype(np.uint8)),
                       ('labels', tokens['labels'].astype(np.int32)), ('ids', targets['teacher_ids'].numpy().astype(np.uint16)),
                       ('logprobs', targets['teacher_logprobs'].numpy().astype(np.float16)), ('tail', targets['teacher_tail_logprob'].numpy())]:
            f.create_dataset(key, data=v, chunks=(1, *v.shape[1:]), **kw)
    return os.path.getsize(path)

def fresh(path):
    "`path`, with any earlier file there removed (so the generator runs rather than returning an identical cache)."
    Path(path).unlink(missing_ok=True); shutil.rmtree(str(path) + '.parts', ignore_errors=True)
    return path

def smollm2_blocks(tok, seq_len):
    from kdkit.data import stdlib_text, prepare_dataset
    return prepare_dataset(stdlib_text(), tok, seq_len=seq_len)

def tokens_of(ds):
    return {key: np.asarray(ds[key], dtype=np.int64) for key in ('input_ids', 'attention_mask', 'labels')}

# ------------------------------------------------------------------ size
def part_size(a, work):
    from kdkit.models import load_smollm2
    print('== size: SmolLM2-135M, k=64, real English text', flush=True)
    model, tok = load_smollm2()
    blocks = smollm2_blocks(tok, a.seq_len)
    ds = blocks.select(range(min(a.size_seqs, len(blocks) - a.heldout_seqs)))
    rec = RecordingTeacher(model, 64, len(tok))
    t0 = time.time()
    p = TeacherLogitsGenerator(rec, tok, k=64, batch_size=8, progress=False).generate(ds, fresh(work / 'smollm2_default.h5'))
    secs = time.time() - t0
    N, S = len(ds), a.seq_len
    entries = N * S * 64
    targets, tokens = cat_targets(rec.records), tokens_of(ds)
    meta = kc.read_cache_metadata(p)
    print(f'  {N * S} tokens cached in {secs:.0f} s ({N * S / secs:.0f} tokens/s)')
    fig('smollm2 tokens measured', N * S, 'tokens')
    fig('smollm2 mean top-64 mass', float((-torch.expm1(targets['teacher_tail_logprob'].double())).mean()), 'probability')
    fig('smollm2 B/entry default (gzip+shuffle, 7-bit values; generator output)', os.path.getsize(p) / entries, 'B/entry', '<= 2.2')
    shutil.copy(p, work / 'reader_smollm2.h5')
    for codec, bits, label in [('gzip', 8, 'gzip, 8-bit'), ('gzip', 6, 'gzip, 6-bit'), ('lzf', 7, 'lzf, 7-bit'),
                               ('zstd', 8, 'zstd, 8-bit'), ('zstd', 7, 'zstd, 7-bit'), ('zstd', 6, 'zstd, 6-bit')]:
        size = write_variant(work / f'v_{codec}{bits}.h5', tokens, targets, variant_meta(meta, codec, bits))
        best = ' = best option' if (codec, bits) == ('zstd', 6) else ''
        fig(f'smollm2 B/entry {label}{best}', size / entries, 'B/entry', '<= 2.0' if best else None)
    check = write_variant(work / 'v_check.h5', tokens, targets, meta)
    fig('smollm2 B/entry default, written by bench from exact targets (check)', check / entries, 'B/entry')
    fig('smollm2 B/entry context: fp16 log-probs + uint16 ids, gzip+shuffle', baseline_fp16_uint16(work / 'fp16.h5', tokens, targets) / entries, 'B/entry')
    fig('smollm2 B/token default', os.path.getsize(p) / (N * S), 'B/token')

# ------------------------------------------------------------------ synthetic 128k
def part_synthetic(a, work):
    print('== synthetic: V=128,256, k=64', flush=True)
    V, S, N = 128256, a.seq_len, a.synthetic_seqs
    g = torch.Generator().manual_seed(0)
    prior = -1.1 * torch.log(torch.arange(V, dtype=torch.float32) + 10.)      # low ids are frequent (as in BPE vocabularies)
    recs, ids = [], []
    for i in range(N):
        beta = torch.exp(0.5 * torch.randn(S, 1, generator=g)) * 1.5              # per-position peakiness
        gum = -torch.log(-torch.log(torch.rand(S, V, generator=g).clamp_min(1e-20)))
        z = (prior + beta * gum)[None]                                          # [1,S,V]
        recs.append(topk_targets(z, 64))
        ids.append(torch.multinomial(torch.softmax(prior, -1), S, replacement=True, generator=g))
    targets = cat_targets(recs)
    x = torch.stack(ids).numpy()
    tokens = dict(input_ids=x, attention_mask=np.ones_like(x), labels=x)
    meta = dict(format=kc.FORMAT_NAME, format_version=kc.FORMAT_VERSION, kdkit_version='bench', mode='topk', teacher_name='synthetic',
                teacher_config_sha256='', vocab_size=V, tokenizer_name='synthetic', tokenizer_fingerprint='', k=64,
                temperatures=np.asarray([1.0], np.float32), n_samples=0, seed=0, seq_len=S, dataset_fingerprint='', n_sequences=N,
                alignment=kc.ALIGNMENT, id_encoding='', id_bits=17, value_encoding='', quant_bits=7, quant_d0=0.25, quant_dmax=25.0, codec='gzip')
    fig('synthetic 128k mean top-64 mass', float((-torch.expm1(targets['teacher_tail_logprob'].double())).mean()), 'probability')
    for codec, bits, label in [('gzip', 7, 'default gzip, 7-bit'), ('zstd', 6, 'best zstd, 6-bit')]:
        size = write_variant(work / f'syn_{codec}{bits}.h5', tokens, targets, variant_meta(meta, codec, bits))
        p = work / f'syn_{codec}{bits}.h5'
        back = CachedLogitsDataset(p).read([0, N - 1])
        assert torch.equal(back['teacher_ids'], targets['teacher_ids'][[0, N - 1]].sort(-1).values)  # 17-bit ids round-trip
        fig(f'synthetic 128k B/entry {label}', size / (N * S * 64), 'B/entry')
        fig(f'synthetic 128k B/token {label}', size / (N * S), 'B/token')

# ------------------------------------------------------------------ fidelity
def sel(T, sl):
    "Rows `sl` of flattened teacher fields (teacher_temperatures is kept whole)."
    return {key: (v if key == 'teacher_temperatures' else v[sl]) for key, v in T.items()}

def kd_per_token(student, targets):
    "Tail-bucket KD per position [N] (T=1), fp64: the quantity distillation_loss averages."
    s = student.double()
    L = s.logsumexp(-1)
    ids = targets['teacher_ids']
    lq = s.gather(-1, ids) - L[:, None]
    lR = s.scatter(-1, ids, float('-inf')).logsumexp(-1) - L
    lp, lt = targets['teacher_logprobs'].double(), targets['teacher_tail_logprob'].double()
    head = torch.where(lp > float('-inf'), lp.exp() * (lp - lq), 0.).sum(-1)
    tail = torch.where(lt > float('-inf'), lt.exp() * (lt - lR), 0.)
    return head + tail

def part_fidelity(a, work):
    from kdkit.models import load_smollm2, load_student_model
    print('== fidelity: held-out SmolLM2 tokens, KD from cache vs exact fp32 top-64', flush=True)
    model, tok = load_smollm2()
    blocks = smollm2_blocks(tok, a.seq_len)
    ds = blocks.select(range(len(blocks) - a.heldout_seqs, len(blocks)))
    rec = RecordingTeacher(model, 64, len(tok), keep_logits=True)
    p = TeacherLogitsGenerator(rec, tok, k=64, batch_size=8, progress=False).generate(ds, fresh(work / 'heldout_default.h5'))
    exact = cat_targets(rec.records)
    logits = torch.cat(rec.logits)                                              # [n,S,V] fp32 teacher logits
    cache = CachedLogitsDataset(p).read(np.arange(len(ds)))
    meta = kc.read_cache_metadata(p)
    best_meta = variant_meta(meta, 'zstd', 6)
    best = decode_targets(encode_targets(exact, best_meta), best_meta)          # the 6-bit encoding (zstd is lossless)
    labels = torch.as_tensor(np.asarray(ds['labels']))
    valid = torch.zeros_like(labels, dtype=torch.bool); valid[:, :-1] = labels[:, 1:] != -100
    flat = lambda t: {key: (v[valid] if v.ndim > 1 else v) for key, v in t.items()}
    E, C, B = flat(exact), flat(cache), flat(best)
    Z = logits[valid]                                                           # [N,V]
    print(f'  {int(valid.sum())} scored held-out tokens')
    fig('fidelity held-out scored tokens', int(valid.sum()), 'tokens')

    def noise_student(sigma):
        g = torch.Generator().manual_seed(1)
        return torch.cat([Z[i:i + 256] + sigma * torch.randn(Z[i:i + 256].shape, generator=g) for i in range(0, len(Z), 256)])

    def per(student, T):
        return torch.cat([kd_per_token(student[i:i + 256], sel(T, slice(i, i + 256))) for i in range(0, len(student), 256)])

    def kd_mean(student, T, rows=None):
        return float(per(student[:rows], sel(T, slice(0, rows))).mean())

    def calibrate(target):
        lo, hi = 0.0, 4.0
        for _ in range(14):
            mid = (lo + hi) / 2
            (lo, hi) = (mid, hi) if kd_mean(noise_student(mid)[:1024], E, 1024) < target else (lo, mid)
        return (lo + hi) / 2

    pruned = load_student_model(model, drop='every_other').eval()
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(ds['input_ids'])); m = torch.as_tensor(np.asarray(ds['attention_mask']))
        pz = torch.cat([pruned(input_ids=x[i:i + 8], attention_mask=m[i:i + 8]).logits[..., :len(tok)] for i in range(0, len(x), 8)])[valid]
    students = [('layer-pruned student', pz, None)]
    for target, name in [(0.30, 'teacher+noise 0.30'), (0.03, 'teacher+noise 0.03')]:
        sigma = calibrate(target)
        students.append((name, noise_student(sigma), f'noise sigma {sigma:.4f}'))
    # sanity: the per-token formula averages to distillation_loss's kd
    n0 = min(512, len(Z))
    s0 = students[1][1][:n0]
    lab = torch.zeros(1, n0 + 1, dtype=torch.long)
    ref_kd = distillation_loss(torch.cat([s0, s0[:1]])[None], lab, {key: (v if key == 'teacher_temperatures' else torch.cat([v[:n0], v[:1]])[None])
                                                                    for key, v in E.items()}, alpha=1.0).kd
    assert abs(float(ref_kd) - kd_mean(s0, E, n0)) < 1e-4 * max(float(ref_kd), 1e-3), 'per-token KD disagrees with distillation_loss'
    for name, st, note in students:
        ke = per(st, E)
        fig(f'fidelity {name}: exact mean KD', float(ke.mean()), 'nats', '0.30 +- 0.03' if '0.30' in name else None, note)
        for T, label in [(C, 'default 7-bit (cache file)'), (B, 'best 6-bit')]:
            kcache = per(st, T)
            rel = float((kcache.mean() - ke.mean()) / ke.mean())
            tgt = '<= 0.5%' if '0.03' not in name else None
            fig(f'fidelity {name}, {label}: signed mean diff', 100 * rel, '% of exact', tgt)
            fig(f'fidelity {name}, {label}: mean per-token |diff|', 100 * float((kcache - ke).abs().mean() / ke.mean()), '% of exact')

# ------------------------------------------------------------------ writer overhead
def part_overhead(a, work):
    from kdkit.models import load_smollm2
    print('== overhead: generate() vs bare forwards, SmolLM2, fp32', flush=True)
    model, tok = load_smollm2()
    ds = smollm2_blocks(tok, a.seq_len).select(range(a.overhead_seqs))
    x, m = torch.as_tensor(np.asarray(ds['input_ids'])), torch.as_tensor(np.asarray(ds['attention_mask']))
    gen = TeacherLogitsGenerator(model, tok, k=64, batch_size=8, progress=False)

    @torch.inference_mode()
    def bare():
        for i in range(0, len(x), 8): model(input_ids=x[i:i + 8], attention_mask=m[i:i + 8])

    def cached(i):
        out = work / f'overhead_{i}.h5'
        gen.generate(ds, out); out.unlink()

    def timed(fn, *args):
        "(wall, process CPU) seconds of one call."
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        return time.perf_counter() - w, time.process_time() - c

    bare(); cached('warm')
    tb, tg = [], []
    for i in range(a.repeats):  # each run times the bare forwards and generate() back to back: a pair
        tb.append(timed(bare)); tg.append(timed(cached, i))
        print(f'  run {i}: bare {tb[-1][0]:.2f} s, generate {tg[-1][0]:.2f} s (ratio {tg[-1][0] / tb[-1][0]:.3f}; '
              f'CPU {tb[-1][1]:.2f} / {tg[-1][1]:.2f} s)', flush=True)
    n = len(x) * a.seq_len
    # Single runs on this shared 2-core VM drift by +-10% within a minute, so the figure is the median of the
    # paired ratios (bare and generate timed back to back), not a ratio of medians taken minutes apart.
    fig('writer overhead generate / bare forwards (median of %d paired runs, wall)' % a.repeats,
        statistics.median(g[0] / b[0] for b, g in zip(tb, tg)), 'x', '<= 1.15')
    fig('writer overhead generate / bare forwards (median of %d paired runs, process CPU time)' % a.repeats,
        statistics.median(g[1] / b[1] for b, g in zip(tb, tg)), 'x')
    fig('writer bare forward throughput', n / statistics.median(b[0] for b in tb), 'tokens/s')
    fig('writer generate throughput', n / statistics.median(g[0] for g in tg), 'tokens/s')

# ------------------------------------------------------------------ reader
def part_reader(a, work):
    from kdkit.data import demo_tokenizer, demo_datasets
    from kdkit.models import load_demo_teacher, load_student_model
    print('== reader: DataLoader (2 workers) vs demo student training, batch 16 x 128', flush=True)
    tok = demo_tokenizer()
    try: teacher, demo_note = load_demo_teacher(), None
    except Exception as e:  # the shipped demo weights are not there yet: same architecture, random weights
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)).eval()
        demo_note = f'demo teacher weights unavailable ({type(e).__name__}); Llama 4 layers hidden 128, random weights'
    train, _ = demo_datasets(seq_len=128, tokenizer=tok)
    p = TeacherLogitsGenerator(teacher, tok, k=64, batch_size=16, progress=False).generate(train, fresh(work / 'demo.h5'))

    def reader_tps(path, seconds=3.0):
        "Tokens/s a fresh DataLoader (2 workers) delivers in whole epochs over at least `seconds`."
        ds = CachedLogitsDataset(path)
        dl = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=2, collate_fn=ds.collate,
                                         persistent_workers=True, prefetch_factor=4)
        it = iter(dl); next(it)  # workers started
        n, t0, first = 0, time.perf_counter(), True
        while first or time.perf_counter() - t0 < seconds:
            for b in (it if first else dl): n += b['input_ids'].numel()
            first = False
        tps = n / (time.perf_counter() - t0)
        del it, dl
        return tps

    student = load_student_model(teacher, drop='every_other').train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    ds = CachedLogitsDataset(p)
    batches = [ds.collate(ds.__getitems__(list(range(i, i + 16)))) for i in range(0, 16 * 16, 16)]

    def train_tps(steps=22):
        "Tokens/s of the demo student's training steps (median step time, the first 2 steps not counted)."
        torch.set_num_threads(a.train_threads)
        times = []
        for j in range(steps):
            b = batches[j % len(batches)]
            t0 = time.perf_counter()
            logits = student(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits
            targets = {key: v for key, v in b.items() if key.startswith('teacher_')}
            distillation_loss(logits, b['labels'], targets, vocab_size=len(tok)).loss.backward()
            opt.step(); opt.zero_grad()
            if j >= 2: times.append(time.perf_counter() - t0)
        torch.set_num_threads(a.threads)
        return 16 * 128 / statistics.median(times)

    # Both rates drift by +-15% within a minute on this shared 2-core VM, so each reader run is paired with a
    # training run right after it, and the figure is the median of the 3 paired ratios.
    pairs = []
    for i in range(3):
        pairs.append((reader_tps(p), train_tps()))
        print(f'  pair {i}: reader {pairs[-1][0]:.4g} tokens/s, training {pairs[-1][1]:.4g} tokens/s, ratio {pairs[-1][0] / pairs[-1][1]:.2f}', flush=True)
    fig('reader tokens/s, demo cache (k=64), DataLoader 2 workers (median of 3)', statistics.median(r for r, _ in pairs), 'tokens/s')
    fig(f'demo student training tokens/s (batch 16 x 128, {a.train_threads} threads; median of 3)',
        statistics.median(t for _, t in pairs), 'tokens/s', note=demo_note)
    fig('reader / training throughput (median of 3 paired runs)', statistics.median(r / t for r, t in pairs), 'x', '>= 20')
    if (work / 'reader_smollm2.h5').exists():
        fig('reader tokens/s, SmolLM2 cache (k=64, V=49152), DataLoader 2 workers', reader_tps(work / 'reader_smollm2.h5'), 'tokens/s')

PARTS = dict(size=part_size, synthetic=part_synthetic, fidelity=part_fidelity, overhead=part_overhead, reader=part_reader)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--parts', default=','.join(PARTS), help='comma-separated parts to run')
    ap.add_argument('--seq-len', type=int, default=128)
    ap.add_argument('--size-seqs', type=int, default=256, help='SmolLM2 blocks for the size figures')
    ap.add_argument('--heldout-seqs', type=int, default=24, help='held-out SmolLM2 blocks (the last ones) for fidelity')
    ap.add_argument('--synthetic-seqs', type=int, default=48)
    ap.add_argument('--overhead-seqs', type=int, default=16)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=1, help='torch threads for the teacher')
    ap.add_argument('--train-threads', type=int, default=2, help='torch threads for the student training step')
    ap.add_argument('--work', default=None, help='folder for the cache files (default: a temporary folder)')
    ap.add_argument('--results', default=str(RESULT), help='JSON file the figures are merged into')
    a = ap.parse_args()
    RESULT = Path(a.results)
    COMMAND = 'python bench/bench_cache.py ' + ' '.join(sys.argv[1:])
    torch.set_num_threads(a.threads)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='kdkit_bench_cache_'))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for name in a.parts.split(','):
        PARTS[name](a, work)
        old = json.loads(RESULT.read_text()) if RESULT.exists() else {}
        names = {f['name'] for f in FIGS}
        figures = [f for f in old.get('figures', []) if f['name'] not in names] + FIGS
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(dict(benchmark='cache', machine=machine(), figures=figures), indent=1) + '\n')
        torch.set_num_threads(a.threads)
    print(f'wrote {RESULT} ({time.time() - t0:.0f} s); machine: {machine()}')
