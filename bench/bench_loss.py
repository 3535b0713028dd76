"""Peak memory and time of the distillation loss, forward + backward from final hidden states to dL/dh and dL/dW:

  (a) baseline  - materialised logits, dense fp32 teacher rebuilt from top-k, dense KL (`reconstruct_then_dense_loss`)
  (b) sparse    - materialised logits, kdkit's sparse tail-bucket loss (`distillation_loss`)
  (c) fused     - kdkit's fused chunked lm_head + loss (`fused_distillation_loss`), one chunk of logits alive

Each variant runs in its own subprocesses (a process's peak RSS never falls), in rounds of alternating order, fp32 on CPU. Targets: peak(c) <= 0.25 x
peak(a); time(c) <= 1.2 x time(b). Writes bench/results/loss.json.

    python bench/bench_loss.py                      # vocab 49152 and 128256, 4096 tokens, hidden 576, k 64
    python bench/bench_loss.py --vocab 8192 --tokens 512 --repeats 1   # a quick look
"""
import argparse, json, os, platform, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ('baseline', 'sparse', 'fused')


def _rss_peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def child(a):
    "Run one variant `a.repeats` times after one warm-up; print a JSON line with times and peak RSS."
    import torch
    from kdkit.losses import distillation_loss, fused_distillation_loss, reconstruct_then_dense_loss
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    N, H, V = a.tokens, a.hidden, a.vocab
    h0 = torch.randn(1, N, H, generator=g)
    W0 = torch.randn(V, H, generator=g) / H ** 0.5
    targets = torch.load(a.targets)
    labels = torch.randint(0, V, (1, N), generator=g)
    setup_peak = _rss_peak_mb()

    def step():
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        if a.variant == 'fused':
            out = fused_distillation_loss(h, W, labels, targets, chunk_size=a.chunk)
        else:
            f = distillation_loss if a.variant == 'sparse' else reconstruct_then_dense_loss
            out = f(h @ W.T, labels, targets)
        out.loss.backward()
        return out.loss.item(), float(h.grad.norm()), float(W.grad.norm())

    vals = step()                                                   # warm-up (allocator, lazy init)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter(); vals = step(); times.append(time.perf_counter() - t0)
    print(json.dumps(dict(variant=a.variant, times_s=times, peak_rss_mb=_rss_peak_mb(), setup_rss_mb=setup_peak,
                          loss=vals[0], grad_h_norm=vals[1], grad_W_norm=vals[2])))


def machine():
    import torch
    cpu = platform.processor()
    try:
        cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except Exception: pass
    return f'{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}'


def make_targets(V, N, k, path):
    "Top-k targets of a random teacher, built in chunks (the children only load the small result)."
    import torch
    from kdkit.losses import topk_targets
    g = torch.Generator().manual_seed(1)
    parts = [topk_targets(torch.randn(1, min(512, N - i), V, generator=g) * 3, k) for i in range(0, N, 512)]
    t = {f: torch.cat([p[f] for p in parts], 1) for f in parts[0] if f != 'teacher_temperatures'}
    t['teacher_temperatures'] = parts[0]['teacher_temperatures']
    torch.save(t, path)


def run_variant(variant, V, a, tpath):
    cmd = [sys.executable, __file__, '--child', variant, '--vocab', str(V), '--tokens', str(a.tokens), '--hidden',
           str(a.hidden), '--k', str(a.k), '--chunk', str(a.chunk), '--repeats', str(a.repeats), '--threads',
           str(a.threads), '--targets', tpath]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    if r.returncode != 0:
        raise SystemExit(f'{variant} at V={V} failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--vocab', type=int, nargs='+', default=[49152, 128256])
    p.add_argument('--tokens', type=int, default=4096)
    p.add_argument('--hidden', type=int, default=576)
    p.add_argument('--k', type=int, default=64)
    p.add_argument('--chunk', type=int, default=1024, help='fused chunk size (tokens)')
    p.add_argument('--repeats', type=int, default=2, help='timed runs per variant (after one warm-up); the minimum is kept')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=2, help='subprocesses per variant, in alternating order (the fastest run is kept)')
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'loss.json'))
    p.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument('--targets', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.variant, a.vocab = a.child, a.vocab[0]
        return child(a)
    command = 'python bench/bench_loss.py ' + ' '.join(sys.argv[1:])
    mach = machine()
    print(f'machine: {mach}\ntokens {a.tokens}, hidden {a.hidden}, k {a.k}, fused chunk {a.chunk}, fp32, '
          f'{a.threads} threads, forward+backward to dL/dh and dL/dW, min of {a.rounds} x {a.repeats} runs\n')
    figs = []
    def fig(name, value, unit, target=None):
        figs.append(dict(name=name, value=round(value, 4), unit=unit, target=target, command=command, machine=mach))
    with tempfile.TemporaryDirectory() as td:
        for V in a.vocab:
            tpath = os.path.join(td, f'targets_{V}.pt')
            make_targets(V, a.tokens, a.k, tpath)
            res = {}
            for r in range(a.rounds):                          # alternating order, so that other load hits all alike
                for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                    x = run_variant(v, V, a, tpath)
                    res[v] = x if v not in res else dict(x, times_s=res[v]['times_s'] + x['times_s'],
                                                         peak_rss_mb=max(x['peak_rss_mb'], res[v]['peak_rss_mb']),
                                                         setup_rss_mb=min(x['setup_rss_mb'], res[v]['setup_rss_mb']))
            print(f'vocab {V}:')
            for v in VARIANTS:
                r = res[v]
                print(f'  ({"abc"[VARIANTS.index(v)]}) {v:9s} time {min(r["times_s"]):7.3f} s   peak RSS {r["peak_rss_mb"]:8.0f} MB'
                      f'   (setup {r["setup_rss_mb"]:.0f} MB)   loss {r["loss"]:.6f}')
                fig(f'{v}_time_v{V}', min(r['times_s']), 's')
                fig(f'{v}_peak_rss_v{V}', r['peak_rss_mb'], 'MB')
                fig(f'{v}_peak_rss_above_setup_v{V}', r['peak_rss_mb'] - r['setup_rss_mb'], 'MB')
            mem = res['fused']['peak_rss_mb'] / res['baseline']['peak_rss_mb']
            mem_x = (res['fused']['peak_rss_mb'] - res['fused']['setup_rss_mb']) / (res['baseline']['peak_rss_mb'] - res['baseline']['setup_rss_mb'])
            tim = min(res['fused']['times_s']) / min(res['sparse']['times_s'])
            tim_a = min(res['fused']['times_s']) / min(res['baseline']['times_s'])
            same = abs(res['fused']['loss'] - res['sparse']['loss']) <= 1e-4 * abs(res['sparse']['loss'])
            print(f'  peak (c)/(a) = {mem:.3f} (target <= 0.25)   above setup {mem_x:.3f}   '
                  f'time (c)/(b) = {tim:.3f} (target <= 1.2)   time (c)/(a) = {tim_a:.3f}   (b) and (c) losses agree: {same}\n')
            fig(f'fused_over_baseline_peak_rss_v{V}', mem, 'ratio', '<= 0.25')
            fig(f'fused_over_baseline_peak_rss_above_setup_v{V}', mem_x, 'ratio')
            fig(f'fused_over_sparse_time_v{V}', tim, 'ratio', '<= 1.2')
            fig(f'fused_over_baseline_time_v{V}', tim_a, 'ratio')
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='loss', machine=mach, config=dict(
        tokens=a.tokens, hidden=a.hidden, k=a.k, chunk=a.chunk, dtype='float32', threads=a.threads, repeats=a.repeats, rounds=a.rounds),
        figures=figs), indent=1) + '\n')
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
