"""kdkit against the tools users would pick instead, on the same machine and the same inputs.

Loss (forward + backward from final hidden states to dL/dh and dL/dW, fp32, each run in its own subprocess, the two
variants alternating (kdkit, liger, liger, kdkit) so that load from other processes hits both alike, the fastest run
kept; peak RSS from /proc VmHWM, above what the variant's inputs take):
  kdkit  - `fused_distillation_loss` on cached top-k targets (k=64, tail bucket), alpha 0.5, T 1, chunk 1024
  liger  - Liger-Kernel's chunked `LigerFusedLinearJSDLoss` in its forward-KL setting (beta=0), fed the teacher's
           hidden states and lm_head as its users run it, weight_hard_loss = weight_soft_loss = 0.5, T 1, chunk 1024,
           compiled=False (CPU: no torch.compile / Triton)
  Same objective at T=1: 0.5 CE + 0.5 KL(teacher||student), per valid token. Liger's teacher is exact (full V);
  kdkit's is the cached top-64 plus the exact tail mass, so its KL is the tail-bucket KL (<= the full KL). Liger
  also runs the teacher's lm_head matmul in every chunk; kdkit reads targets computed once.

Step (one optimizer step of a transformers Trainer, same student, teacher, data and batch, fp32, no gradient
checkpointing, CPU time and wall time of the steps after warm-up, sides in alternating rounds):
  ce           - transformers.Trainer on the student's own CE: the floor of any distillation step (no teacher)
  kdkit_cached - DistillationTrainer on a k=64 HDF5 cache of the teacher, alpha 1 (KL only, as GKD)
  kdkit_online - DistillationTrainer with the teacher in the loop, all V ids (exact forward KL), alpha 1
  trl_gkd      - TRL's GKDTrainer with its online teacher: lmbda=0 (no student generation), beta=0 (forward KL),
                 temperature 1 (GKD uses it for sampling only), bf16=False and gradient_checkpointing=False
                 (GKDConfig's defaults are True; kdkit runs fp32 without checkpointing)

Targets (the issue's): kdkit loss <= 1.0x Liger in time and memory; kdkit cached step <= 0.5x TRL's, online <= 1.0x.
The `ce` side shows how far a cached step can go: ce / trl_gkd is the lowest ratio any cached distillation step can have.
`--part loss|step` rewrites only that part's figures in the results file.
Writes bench/results/peers.json. Needs the bench extra: pip install --no-deps liger-kernel==0.8.5 trl==1.16.0

    python bench/bench_peers.py                          # loss at V 49152 and 128256, 4096 tokens; steps
    python bench/bench_peers.py --part step --rounds 6   # the steps only
    python bench/bench_peers.py --part loss --vocab 8192 --tokens 256   # a quick look
"""
import argparse, copy, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine  # noqa: E402

LOSSES = ('kdkit', 'liger')
STEPS = ('ce', 'kdkit_cached', 'kdkit_online', 'trl_gkd')


def _rss_mb():
    "This process's peak RSS in MB: VmHWM, which starts afresh at exec (ru_maxrss keeps the forking parent's peak)."
    try:
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024
    except (OSError, StopIteration): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loss_child(a):
    "One loss variant: `a.repeats` timed forward+backward runs (the first includes lazy init); a JSON line with times and peak RSS."
    import torch
    torch.set_num_threads(a.threads)
    d = torch.load(a.inputs)                                             # only what this variant needs (see make_loss_inputs)
    h0, W0, labels = d['hidden'], d['weight'], d['labels']              # [1,N,H], [V,H], [1,N]
    if a.child == 'kdkit':
        from kdkit.losses import fused_distillation_loss
        targets = d['targets']
        del d
        def step():
            h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
            out = fused_distillation_loss(h, W, labels, targets, chunk_size=a.chunk, alpha=0.5)
            out.loss.backward()
            return out.loss.item(), float(h.grad.norm()), float(W.grad.norm())
    else:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
        th, tW = d['teacher_hidden'], d['teacher_weight']                 # [1,N,Ht], [V,Ht]
        del d
        f = LigerFusedLinearJSDLoss(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.0, temperature=1.0, compiled=False,
                                    chunk_size=a.chunk)
        y = torch.full_like(labels, -100); y[:, :-1] = labels[:, 1:]     # Liger takes aligned targets: shift here
        def step():
            h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
            loss = f(h.view(-1, h.shape[-1]), W, th.view(-1, th.shape[-1]), tW, y.view(-1))
            loss.backward()
            return loss.item(), float(h.grad.norm()), float(W.grad.norm())
    setup = _rss_mb()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter(); vals = step(); times.append(time.perf_counter() - t0)
    print(json.dumps(dict(variant=a.child, times_s=times, peak_rss_mb=_rss_mb(), setup_rss_mb=setup, loss=vals[0],
                          grad_h_norm=vals[1], grad_W_norm=vals[2])))


def make_loss_inputs(V, a, path):
    "Student hidden states and lm_head, a teacher (hidden states, lm_head) and its cached top-k targets, saved for the children."
    import torch
    from kdkit.losses import topk_targets
    g = torch.Generator().manual_seed(0)
    N, H, Ht = a.tokens, a.hidden, a.teacher_hidden
    hidden, weight = torch.randn(1, N, H, generator=g), torch.randn(V, H, generator=g) / H ** 0.5
    th, tW = torch.randn(1, N, Ht, generator=g), torch.randn(V, Ht, generator=g) * (2 / Ht ** 0.5)
    labels = torch.randint(0, V, (1, N), generator=g); labels[:, :N // 16] = -100   # a masked prompt
    parts = [topk_targets(th[:, i:i + 512] @ tW.T, a.k) for i in range(0, N, 512)]  # the cache's fields, made in chunks
    targets = {f: torch.cat([p[f] for p in parts], 1) for f in parts[0] if f != 'teacher_temperatures'}
    targets['teacher_temperatures'] = parts[0]['teacher_temperatures']
    common = dict(hidden=hidden, weight=weight, labels=labels)
    torch.save(dict(common, targets=targets), f'{path}.kdkit')
    torch.save(dict(common, teacher_hidden=th, teacher_weight=tW), f'{path}.liger')


def run_loss(variant, V, a, path):
    cmd = [sys.executable, __file__, '--child', variant, '--inputs', f'{path}.{variant}', '--chunk', str(a.chunk), '--repeats', str(a.repeats),
           '--threads', str(a.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    if r.returncode != 0: raise SystemExit(f'{variant} at V={V} failed (exit {r.returncode}):\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])



def same_objective(V, a, path, n=256):
    "kdkit with all V ids stored (exact forward KL) against Liger on the last `n` tokens: (kdkit loss, liger loss)."
    import torch
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    from kdkit.losses import fused_distillation_loss, topk_targets
    d = torch.load(f'{path}.liger')
    h, W, lab = d['hidden'][:, -n:], d['weight'], d['labels'][:, -n:]
    th, tW = d['teacher_hidden'][:, -n:], d['teacher_weight']
    full = topk_targets(th @ tW.T, V)                                   # k = V: no tail, the exact teacher
    ours = fused_distillation_loss(h, W, lab, full, chunk_size=a.chunk, alpha=0.5).loss.item()
    y = torch.full_like(lab, -100); y[:, :-1] = lab[:, 1:]
    theirs = LigerFusedLinearJSDLoss(beta=0.0, compiled=False, chunk_size=a.chunk)(h[0], W, th[0], tW, y[0]).item()
    return ours, theirs


def loss_part(a, fig, log):
    "Run both loss variants at every vocabulary size; add figures."
    with tempfile.TemporaryDirectory() as td:
        for V in a.vocab:
            path = os.path.join(td, f'inputs_{V}.pt')
            make_loss_inputs(V, a, path)
            ours, theirs = same_objective(V, a, path)
            res = {}
            for r in range(a.loss_rounds):                                   # alternating kdkit, liger / liger, kdkit
                for v in (LOSSES if r % 2 == 0 else LOSSES[::-1]):
                    x = run_loss(v, V, a, path)
                    if v in res: x = dict(x, times_s=res[v]['times_s'] + x['times_s'],
                                          peak_rss_mb=max(x['peak_rss_mb'], res[v]['peak_rss_mb']), setup_rss_mb=min(x['setup_rss_mb'], res[v]['setup_rss_mb']))
                    res[v] = x
            log[f'loss_v{V}'] = dict(res, exact_kdkit_loss_256_tokens=ours, liger_loss_256_tokens=theirs)
            print(f'vocab {V}: same objective on the last 256 tokens with all ids stored: kdkit {ours:.6f}, liger {theirs:.6f}')
            for v in LOSSES:
                r = res[v]
                print(f'  {v:6s} time {min(r["times_s"]):7.2f} s   peak RSS {r["peak_rss_mb"]:7.0f} MB   above setup '
                      f'{r["peak_rss_mb"] - r["setup_rss_mb"]:7.0f} MB   loss {r["loss"]:.5f}', flush=True)
                fig(f'{v}_loss_time_v{V}', min(r['times_s']), 's')
                fig(f'{v}_loss_peak_rss_above_setup_v{V}', r['peak_rss_mb'] - r['setup_rss_mb'], 'MB')
            k, li = res['kdkit'], res['liger']
            t = min(k['times_s']) / min(li['times_s'])
            m = max(k['peak_rss_mb'] - k['setup_rss_mb'], 1.) / max(li['peak_rss_mb'] - li['setup_rss_mb'], 1.)  # 1 MB floor
            m_total = k['peak_rss_mb'] / li['peak_rss_mb']
            print(f'  kdkit/liger time {t:.3f} (target <= 1.0)   memory above setup {m:.3f} (target <= 1.0)   whole process {m_total:.3f}\n')
            note = 'Liger compiled=False (CPU); same 0.5 CE + 0.5 KL at T=1; Liger exact teacher, kdkit top-64 + tail bucket'
            fig(f'kdkit_over_liger_loss_time_v{V}', t, 'x', '<= 1.0', note)
            fig(f'kdkit_over_liger_loss_memory_v{V}', m, 'x', '<= 1.0', note + '; peak RSS above setup')
            fig(f'kdkit_over_liger_loss_process_rss_v{V}', m_total, 'x', None, 'whole-process peak RSS (Liger also holds the teacher lm_head)')


def step_part(a, fig, log):
    "kdkit cached, kdkit online and TRL GKD steps on the same student, teacher, data and batch; add figures."
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from bench.bench_trainer import StepTimer, teacher_model
    from kdkit.cache import CachedLogitsDataset, TeacherLogitsGenerator
    from kdkit.data import demo_datasets, demo_tokenizer
    from kdkit.models import load_student_model
    from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments
    torch.set_num_threads(a.step_threads)
    tok = demo_tokenizer()
    teacher, kind = teacher_model(tok)
    teacher.eval()
    student0 = load_student_model(teacher, drop='every_other')
    train, _ = demo_datasets(n_train_blocks=a.batch * a.steps + a.batch, n_eval_blocks=4, seq_len=a.seq_len, tokenizer=tok)
    tmp = Path(tempfile.mkdtemp(prefix='kdkit-peers-'))
    TeacherLogitsGenerator(teacher, tok, k=a.k, progress=False).generate(train, tmp / 'cache.h5')
    cache = CachedLogitsDataset(tmp / 'cache.h5')
    common = dict(per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=1e-4, report_to=[], use_cpu=True,
                  disable_tqdm=True, save_strategy='no', logging_steps=a.steps, dataloader_num_workers=0, seed=0)

    def run(side):
        timer, student = StepTimer(), copy.deepcopy(student0)
        if side == 'ce':                                                    # the floor: the student's own step, no teacher
            tr = Trainer(student, TrainingArguments(output_dir=str(tmp / side), **common), train_dataset=train,
                         data_collator=default_data_collator, callbacks=[timer])
        elif side == 'trl_gkd':
            args = GKDConfig(output_dir=str(tmp / side), **common, lmbda=0.0, beta=0.0, temperature=1.0, bf16=False,
                             gradient_checkpointing=False, max_length=a.seq_len)
            tr = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                            data_collator=default_data_collator, processing_class=tok, callbacks=[timer])
        else:
            args = DistillationTrainingArguments(output_dir=str(tmp / side), **common, alpha=1.0, temperature=1.0)
            data = dict(train_dataset=train, teacher_model=teacher) if side == 'kdkit_online' else dict(train_dataset=cache)
            tr = DistillationTrainer(student, args, callbacks=[timer], processing_class=tok, **data)
        tr.train()
        return timer.times[a.warmup:], tr.state.log_history[0].get('loss')

    times, losses = {s: [] for s in STEPS}, {}
    for r in range(a.rounds):
        for s in (STEPS if r % 2 == 0 else STEPS[::-1]):
            t, losses[s] = run(s)
            times[s] += t
            print(f'round {r} {s:13s} median cpu {1e3 * statistics.median(x[1] for x in times[s]):7.1f} ms/step, '
                  f'wall {1e3 * statistics.median(x[0] for x in times[s]):7.1f} ms/step, loss {losses[s]:.4f}', flush=True)
    cpu = {s: 1e3 * statistics.median(x[1] for x in v) for s, v in times.items()}
    wall = {s: 1e3 * statistics.median(x[0] for x in v) for s, v in times.items()}
    log['step'] = dict(teacher=kind, batch=a.batch, seq_len=a.seq_len, vocab=len(tok), k=a.k, rounds=a.rounds, steps=a.steps,
                       warmup=a.warmup, threads=a.step_threads, cpu_ms=cpu, wall_ms=wall, first_logged_loss=losses,
                       student_params=sum(p.numel() for p in student0.parameters()))
    gkd = 'TRL GKDTrainer lmbda=0, beta=0 (forward KL), T=1, KL only, fp32, no checkpointing; kdkit alpha=1, T=1'
    for s in STEPS: fig(f'{s}_step_cpu', cpu[s], 'ms')
    fig('ce_over_trl_gkd_step_cpu', cpu['ce'] / cpu['trl_gkd'], 'x', None,
        "the floor of any distillation step: the student's own CE step (transformers.Trainer) over TRL's")
    fig('kdkit_cached_over_ce_step_cpu', cpu['kdkit_cached'] / cpu['ce'], 'x', None, 'what cached KD adds to a plain CE step')
    fig('kdkit_cached_over_trl_gkd_step_cpu', cpu['kdkit_cached'] / cpu['trl_gkd'], 'x', '<= 0.5', gkd + '; kdkit k=64 cache')
    fig('kdkit_online_over_trl_gkd_step_cpu', cpu['kdkit_online'] / cpu['trl_gkd'], 'x', '<= 1.0', gkd + '; kdkit all V ids')
    fig('kdkit_cached_over_trl_gkd_step_wall', wall['kdkit_cached'] / wall['trl_gkd'], 'x', None, gkd)
    fig('kdkit_online_over_trl_gkd_step_wall', wall['kdkit_online'] / wall['trl_gkd'], 'x', None, gkd)


def merge_previous(out:dict, path:Path, part:str) -> dict:
    "A `--part loss|step` run replaces only its own part of the results file; the other part's figures are kept."
    if part == 'all' or not path.exists(): return out
    old = json.loads(path.read_text())
    ours = {f['name'] for f in out['figures']}
    keep = [f for f in old.get('figures', []) if f['name'] not in ours and ('step' in f['name']) != (part == 'step')]
    details = {k: v for k, v in old.get('details', {}).items() if k not in out['details']}
    return dict(out, details=dict(details, **out['details']), figures=keep + out['figures'],
                command=f"{old.get('command')} ; {out['command']}" if old.get('command') != out['command'] else out['command'])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--part', choices=('all', 'loss', 'step'), default='all')
    p.add_argument('--vocab', type=int, nargs='+', default=[49152, 128256])
    p.add_argument('--tokens', type=int, default=4096, help='loss: tokens')
    p.add_argument('--hidden', type=int, default=576, help='loss: student hidden size')
    p.add_argument('--teacher_hidden', type=int, default=576, help="loss: the teacher's hidden size (what Liger multiplies)")
    p.add_argument('--k', type=int, default=64, help='cached top-k ids per token')
    p.add_argument('--chunk', type=int, default=1024, help='loss: tokens per chunk, both sides')
    p.add_argument('--repeats', type=int, default=1, help='loss: timed runs per variant per subprocess')
    p.add_argument('--loss_rounds', type=int, default=2, help='loss: subprocesses per variant, in alternating order (the fastest run is kept)')
    p.add_argument('--threads', type=int, default=2, help='loss: torch threads')
    p.add_argument('--rounds', type=int, default=4, help='step: alternating rounds per side')
    p.add_argument('--steps', type=int, default=5, help='step: optimizer steps per side per round')
    p.add_argument('--warmup', type=int, default=2, help='step: steps dropped at the start of each round')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--seq_len', type=int, default=128)
    p.add_argument('--step_threads', type=int, default=1)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'peers.json'))
    p.add_argument('--child', choices=LOSSES, help=argparse.SUPPRESS)
    p.add_argument('--inputs', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child: return loss_child(a)
    import importlib.metadata as md
    versions = {n: md.version(n) for n in ('liger-kernel', 'trl', 'transformers', 'torch')}
    command = 'python bench/bench_peers.py' + ''.join(f' {x}' for x in sys.argv[1:] if not x.startswith('--out'))
    mach = machine()
    print(f'machine: {mach}\npeers: {versions}\n')
    figs, log = [], {}
    def fig(name, value, unit, target=None, note=None):
        figs.append(dict(name=name, value=round(value, 4), unit=unit, target=target, command=command, machine=mach,
                         **({'note': note} if note else {})))
    t0 = time.perf_counter()
    if a.part in ('all', 'loss'): loss_part(a, fig, log)
    if a.part in ('all', 'step'): step_part(a, fig, log)
    out = dict(benchmark='peers', machine=mach, command=command, versions=versions,
               config=dict(tokens=a.tokens, hidden=a.hidden, teacher_hidden=a.teacher_hidden, k=a.k, chunk=a.chunk,
                           repeats=a.repeats, loss_rounds=a.loss_rounds, threads=a.threads, dtype='float32', seconds=round(time.perf_counter() - t0)),
               details=log, figures=figs)
    out = merge_previous(out, Path(a.out), a.part)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + '\n')
    for f in figs: print(f"{f['name']:42s} {f['value']:10.3f} {f['unit']}" + (f"  (target {f['target']})" if f['target'] else ''))
    print('wrote', a.out)


if __name__ == '__main__':
    main()
