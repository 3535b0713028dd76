"""Cache writer benchmarks: the pipeline's ceiling, its overlap with a teacher, the real SmolLM2 teacher, sizes.
Writes bench/results/writer.json (figures of parts not run are kept from the previous file).

Parts:
  ceiling  TeacherLogitsGenerator.generate with an instant teacher: precomputed top-k fields (V = 49,152, k = 64,
           synthetic logits, 128-token sequences) handed over as an accelerator does (entries already in id order,
           `_device_targets` sorts them on any non-CPU device); default codec; tokens/s, the
           median of --repeats runs. Target >= 150,000 tok/s on 2 cores.
  overlap  the same with a teacher that sleeps (no CPU) a fixed time per batch, as a GPU at 50,000 tok/s would;
           total generate time / the teacher's time (the time its calls took, measured: the OS oversleeps about
           0.2 ms per call even on an idle machine), median of --repeats runs. Target <= 1.05.
  real     SmolLM2-135M fp32: generate / bare forwards (the same batches), at 1 and 2 torch threads, the median of
           the ratios of --repeats paired runs (bare and generate back to back). Target <= 1.10.
  merge    rank 0's merge of finished segments into one file (several ranks), seconds per GB of cache.
  size     SmolLM2, real English text: the default codec's B/entry (target <= 2.2) and sample mode with 50
           draws, B/token (target <= 40).

    python bench/bench_writer.py                        # everything (about 5-10 min on 2 CPU cores)
    python bench/bench_writer.py --parts ceiling,overlap

The machine is shared: each figure records the 1-minute load average when it was measured.

Trade-off of the direct deflate: the writer deflates chunks itself with ISA-L at level 2 (zlib level 6 without
isal), where HDF5's filter used zlib level 9. On cache data both give the same size to 0.1% (measured on
synthetic V = 49,152 top-64 chunks: zlib-9 2.373 B/entry at 78k tok/s per core, ISA-L-2 2.371 at 895k).
"""
import argparse, json, os, sys, tempfile, time, statistics, shutil
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
from bench.machine import machine
from kdkit.cache import TeacherLogitsGenerator
from kdkit.cache_writer import _sorted_by_id
from kdkit.losses import topk_targets
from kdkit.models import tiny_model

RESULT = ROOT / 'bench' / 'results' / 'writer.json'
FIGS, COMMAND = [], ''
V, K, S, B = 49152, 64, 128, 8

def fig(name, value, unit, target=None, note=None):
    "Record one figure (with the command and the load average) and print it."
    load = round(os.getloadavg()[0], 2)
    FIGS.append(dict(name=name, value=value, unit=unit, target=target, command=COMMAND, load=load, **({'note': note} if note else {})))
    print(f'  {name}: {value:.4g} {unit}' + (f'  (target {target})' if target else '') + f'  [load {load}]' + (f' [{note}]' if note else ''), flush=True)

class _Tok:
    "The least a generator needs of a tokenizer: a size and a vocabulary."
    name_or_path = 'synthetic'
    def __len__(self): return V
    def get_vocab(self): return {f't{i}': i for i in range(V)}

class InstantGenerator(TeacherLogitsGenerator):
    "A generator whose teacher is instant (or sleeps `sleep` s per batch): it hands over precomputed top-k fields."
    def __init__(self, pool, sleep=0.0, **kw):
        super().__init__(tiny_model(V, layers=1, hidden=16), _Tok(), k=K, batch_size=B, progress=False, **kw)
        self.pool, self.sleep, self.teacher_seconds = pool, sleep, 0.0
    def _device_targets(self, x, m, start):
        if self.sleep:  # the teacher's time is what its call took: the OS oversleeps ~0.2 ms a call, idle or not
            t0 = time.perf_counter(); time.sleep(self.sleep); self.teacher_seconds += time.perf_counter() - t0
        return [(0, 0, [self.pool[(start // B) % len(self.pool)]])], None

def synthetic_pool(n=8, seed=0):
    "`n` batches of top-k fields [B,S,k] from Zipf-like synthetic logits (a shared profile plus per-position noise)."
    g = torch.Generator().manual_seed(seed)
    base = -1.1 * torch.log1p(torch.randperm(V, generator=g).float())          # [V] a Zipf-like profile
    pool = []
    for _ in range(n):
        z = base + 2.0 * torch.randn(B, S, V, generator=g)                          # [B,S,V]
        pool.append(_sorted_by_id(topk_targets(z, K, [1.0], chunk_size=32)))  # in id order, as an accelerator hands them over
    return pool

def blocks(n, seed=0):
    x = np.random.default_rng(seed).integers(0, V, (n, S))
    return dict(input_ids=x, attention_mask=np.ones_like(x), labels=x)

def fresh(path):
    Path(path).unlink(missing_ok=True); shutil.rmtree(str(path) + '.parts', ignore_errors=True)
    return path

def part_ceiling(a, work, pool):
    print(f'== ceiling: instant teacher, V={V}, k={K}, default codec', flush=True)
    data, rates = blocks(a.seqs), []
    gen = InstantGenerator(pool)
    for i in range(a.repeats):
        t0 = time.perf_counter(); gen.generate(data, fresh(work / 'ceiling.h5')); dt = time.perf_counter() - t0
        rates.append(a.seqs * S / dt); print(f'  run {i}: {rates[-1]:,.0f} tok/s', flush=True)
    fig(f'writer ceiling, instant teacher (V={V}, k={K}, gzip, {gen.workers} workers; median of {a.repeats})', statistics.median(rates), 'tok/s', '>= 150000')

def part_overlap(a, work, pool):
    sleep = B * S / 50_000
    print(f'== overlap: a teacher sleeping {sleep * 1e3:.1f} ms per batch of {B}x{S} (50,000 tok/s)', flush=True)
    data, ratios = blocks(a.seqs), []
    for i in range(a.repeats):
        gen = InstantGenerator(pool, sleep=sleep)
        t0 = time.perf_counter(); gen.generate(data, fresh(work / 'overlap.h5')); dt = time.perf_counter() - t0
        ratios.append(dt / gen.teacher_seconds); print(f'  run {i}: total {dt:.2f} s, teacher {gen.teacher_seconds:.2f} s ({ratios[-1]:.3f})', flush=True)
    fig(f'writer overlap, total / teacher time (teacher at 50,000 tok/s; median of {a.repeats})', statistics.median(ratios), 'x', '<= 1.05')

def _smollm2_blocks(tok, n):
    from kdkit.data import stdlib_text, prepare_dataset
    return prepare_dataset(stdlib_text(), tok, seq_len=S).select(range(n))

def part_real(a, work, pool):
    from kdkit.models import load_smollm2
    model, tok = load_smollm2()
    ds = _smollm2_blocks(tok, a.real_seqs)
    x, m = torch.as_tensor(np.asarray(ds['input_ids'])), torch.as_tensor(np.asarray(ds['attention_mask']))

    @torch.inference_mode()
    def bare():
        for i in range(0, len(x), B): model(input_ids=x[i:i + B], attention_mask=m[i:i + B])

    for threads in (1, 2):
        torch.set_num_threads(threads)
        print(f'== real: SmolLM2-135M fp32, {threads} torch thread(s), {len(x)} x {S} tokens', flush=True)
        gen = TeacherLogitsGenerator(model, tok, k=K, batch_size=B, progress=False)
        bare(); gen.generate(ds, fresh(work / 'real.h5'))  # warm
        pairs = []
        for i in range(a.repeats):
            t0 = time.perf_counter(); bare(); tb = time.perf_counter() - t0
            t0 = time.perf_counter(); gen.generate(ds, fresh(work / 'real.h5')); tg = time.perf_counter() - t0
            pairs.append((tb, tg)); print(f'  run {i}: bare {tb:.2f} s, generate {tg:.2f} s ({tg / tb:.3f})', flush=True)
        fig(f'writer real teacher, generate / bare forwards, SmolLM2, {threads} thread(s) (median of {a.repeats} pairs)',
            statistics.median(g / b for b, g in pairs), 'x', '<= 1.10')
        fig(f'writer real teacher, bare forward throughput, {threads} thread(s)', len(x) * S / statistics.median(b for b, _ in pairs), 'tok/s')
    torch.set_num_threads(a.threads)

def part_size(a, work, pool):
    from kdkit.models import load_smollm2
    model, tok = load_smollm2()
    ds = _smollm2_blocks(tok, a.size_seqs)
    n = len(ds) * S
    print(f'== size: SmolLM2-135M, {n} tokens of real English text', flush=True)
    p = TeacherLogitsGenerator(model, tok, k=K, batch_size=B, progress=False).generate(ds, fresh(work / 'size.h5'))
    fig('writer SmolLM2 B/entry, default codec (gzip + shuffle, 7-bit values, k=64)', os.path.getsize(p) / (n * K), 'B/entry', '<= 2.2')
    p = TeacherLogitsGenerator(model, tok, mode='sample', n_samples=50, batch_size=B, progress=False).generate(ds, fresh(work / 'sample.h5'))
    fig('writer SmolLM2 B/token, sample mode, 50 draws (gzip)', os.path.getsize(p) / n, 'B/token', '<= 40')

def part_merge(a, work, pool):
    "Rank 0's merge of several ranks' segments (single-process runs copy each segment as it is written): seconds per GB."
    import kdkit.cache_writer as cw
    gen, rows = InstantGenerator(pool), cw._Rows(blocks(a.seqs))
    meta = gen.metadata(rows)
    segs = cw.plan_segments(rows.n, gen.segment_size)
    per_gb = []
    for i in range(a.repeats):
        parts = work / f'merge{i}.h5.parts'; parts.mkdir()
        gen._write_segments(rows, meta, parts, segs, 'segments')
        size = sum(cw.segment_path(parts, *s).stat().st_size for s in segs)
        t0 = time.perf_counter(); cw._merge_segments(work / f'merge{i}.h5', parts, segs, meta); dt = time.perf_counter() - t0
        per_gb.append(dt / (size / 1e9)); print(f'  run {i}: {size / 1e6:.1f} MB merged in {dt:.2f} s ({per_gb[-1]:.1f} s/GB)', flush=True)
    fig(f'writer merge of segments (rank 0, several ranks), seconds per GB (median of {a.repeats})', statistics.median(per_gb), 's/GB')

PARTS = dict(ceiling=part_ceiling, overlap=part_overlap, real=part_real, size=part_size, merge=part_merge)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--parts', default=','.join(PARTS))
    ap.add_argument('--seqs', type=int, default=1024, help='sequences of the ceiling and overlap runs')
    ap.add_argument('--real-seqs', type=int, default=16)
    ap.add_argument('--size-seqs', type=int, default=64)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1, help='torch threads outside the real part')
    ap.add_argument('--results', default=str(RESULT))
    a = ap.parse_args()
    COMMAND = 'python bench/bench_writer.py ' + ' '.join(sys.argv[1:])
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix='kdkit_bench_writer_'))
    parts = a.parts.split(',')
    pool = synthetic_pool() if {'ceiling', 'overlap', 'merge'} & set(parts) else None
    result = Path(a.results)
    for name in parts:
        PARTS[name](a, work, pool)
        old = json.loads(result.read_text()) if result.exists() else {}
        names = {f['name'] for f in FIGS}
        figures = [f for f in old.get('figures', []) if f['name'] not in names] + FIGS
        result.write_text(json.dumps(dict(benchmark='writer', machine=machine(), figures=figures), indent=1) + '\n')
    shutil.rmtree(work, ignore_errors=True)
    print(f'wrote {result}; machine: {machine()}')
