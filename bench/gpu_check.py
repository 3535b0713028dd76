"""GPU checks in one script of at most 8 minutes on an H200 (bf16): run it whenever a GPU is at hand.

  bf16       - the fused loss in bf16 against fp32 (loss, gradient cosines), V = 128,256
  memory     - peak CUDA memory and time, fused against materialised logits (sparse loss, and the dense baseline that
               rebuilds the teacher from top-k), V = 128,256 and 152,064
  liger      - kdkit's fused loss against Liger-Kernel's LigerFusedLinearJSDLoss (beta=0, compiled) at V = 128,256
  writer     - TeacherLogitsGenerator throughput with SmolLM2-135M on the GPU (loaded as kdkit does, from the GGUF)
               against the bare teacher forward
  step       - DistillationTrainer step (cached, unfused and fused) against a plain CE Trainer step, SmolLM2 student
  fsdp       - DistillationTrainer + FSDP2 (fsdp_version 2) with the fused loss, one process under torchrun

Each check runs on its own: a failure is recorded with its error and the next check runs; checks that would start
after --budget seconds are skipped. Without a GPU everything runs CPU-sized (small shapes, the demo teacher, Liger
uncompiled, no FSDP: the HF Trainer refuses FSDP without a GPU), as tests/test_gpu_check.py does.
Writes bench/results/gpu.json on a GPU (the GPU named in it); pass --out on CPU.

    python bench/gpu_check.py                          # on a GPU machine
    python bench/gpu_check.py --out /tmp/gpu_cpu.json  # CPU-sized
"""
import argparse, copy, json, os, statistics, subprocess, sys, tempfile, time, traceback
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402
from bench.machine import machine  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = 'cuda' if CUDA else 'cpu'
SIZE = dict(tokens=8192, hidden=2048, k=64, vocabs=[128256, 152064], chunk=1024, step_batch=8, step_seq=512, steps=12,
            writer_blocks=512, writer_seq=512) if CUDA else \
       dict(tokens=256, hidden=64, k=16, vocabs=[4096, 5120], chunk=64, step_batch=4, step_seq=64, steps=5,
            writer_blocks=32, writer_seq=64)
DT = torch.bfloat16 if CUDA else torch.float32   # bf16 matmuls are ~5x slower than fp32 on CPU


def sync():
    if CUDA: torch.cuda.synchronize()


def peak_reset():
    if CUDA: sync(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() if CUDA else 0


def peak_mb(base):
    "Peak CUDA memory above `base` since peak_reset (None on CPU)."
    return (torch.cuda.max_memory_allocated() - base) / 2**20 if CUDA else None


def timed(f, n=3):
    "Median seconds of `f()` over `n` calls after one warm-up."
    f(); sync(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); sync(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def problem(V, dtype=DT, seed=0):
    "Hidden states [1,N,H], lm_head [V,H] (dtype), labels with a masked prompt, top-k targets of a peaked teacher."
    from kdkit.losses import topk_targets
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, H = SIZE['tokens'], SIZE['hidden']
    h = torch.randn(1, N, H, generator=g, device=DEV)
    W = torch.randn(V, H, generator=g, device=DEV) / H ** 0.5
    lab = torch.randint(0, V, (1, N), generator=g, device=DEV); lab[:, :N // 16] = -100
    tg = [topk_targets(torch.randn(1, 1024, V, generator=g, device=DEV) * 4, SIZE['k']) for _ in range(0, N, 1024)]
    tg = {f: torch.cat([t[f] for t in tg], 1)[:, :N] if f != 'teacher_temperatures' else tg[0][f] for f in tg[0]}
    return h.to(dtype), W.to(dtype), lab, tg


def check_bf16(fig):
    "The fused loss with bf16 hidden states and weight against the same inputs in fp32."
    from kdkit.losses import fused_distillation_loss
    V = SIZE['vocabs'][0]
    h, W, lab, tg = problem(V, torch.float32)
    out = {}
    for name, dt in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        hh, WW = h.detach().to(dt).requires_grad_(), W.detach().to(dt).requires_grad_()
        r = fused_distillation_loss(hh, WW, lab, tg, chunk_size=SIZE['chunk'])
        r.loss.backward()
        out[name] = (r.loss.item(), hh.grad.float().flatten(), WW.grad.float().flatten())
    rel = abs(out['bf16'][0] - out['fp32'][0]) / abs(out['fp32'][0])
    cos = [torch.nn.functional.cosine_similarity(out['bf16'][i], out['fp32'][i], 0).item() for i in (1, 2)]
    fig('bf16_fused_loss_rel_error', rel, 'ratio', '<= 0.01', f'V={V}, {SIZE["tokens"]} tokens, hidden {SIZE["hidden"]}')
    fig('bf16_fused_grad_hidden_cosine', cos[0], 'cosine', '>= 0.999')
    fig('bf16_fused_grad_weight_cosine', cos[1], 'cosine', '>= 0.999')
    return dict(loss_fp32=out['fp32'][0], loss_bf16=out['bf16'][0])


def check_memory(fig):
    "Peak memory and time of dense baseline / sparse / fused, forward + backward, at each vocabulary size."
    from kdkit.losses import distillation_loss, fused_distillation_loss, reconstruct_then_dense_loss
    details = {}
    for V in SIZE['vocabs']:
        h0, W0, lab, tg = problem(V)
        res = {}
        for variant in ('dense', 'sparse', 'fused'):
            def step():
                h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
                if variant == 'fused': r = fused_distillation_loss(h, W, lab, tg, chunk_size=SIZE['chunk'])
                else: r = (distillation_loss if variant == 'sparse' else reconstruct_then_dense_loss)(h @ W.T, lab, tg)
                r.loss.backward()
                return r.loss.item()
            step()
            base = peak_reset()
            loss = step()
            mem = peak_mb(base)
            res[variant] = dict(peak_mb=mem, seconds=timed(step, 2), loss=loss)
            if CUDA: fig(f'{variant}_peak_mb_v{V}', mem, 'MB', None, f'{DT}, {SIZE["tokens"]} tokens')
            fig(f'{variant}_time_v{V}', res[variant]['seconds'], 's')
        if CUDA:
            fig(f'fused_over_dense_peak_v{V}', res['fused']['peak_mb'] / res['dense']['peak_mb'], 'x', '<= 0.25')
            fig(f'fused_over_sparse_peak_v{V}', res['fused']['peak_mb'] / res['sparse']['peak_mb'], 'x')
        fig(f'fused_over_sparse_time_v{V}', res['fused']['seconds'] / res['sparse']['seconds'], 'x', '<= 1.2')
        details[V] = res
    return details


def check_liger(fig):
    "kdkit fused (cached top-k targets) against Liger's chunked fused-linear forward KL (teacher hidden states + lm_head)."
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    from kdkit.losses import fused_distillation_loss
    V = SIZE['vocabs'][0]
    h0, W0, lab, tg = problem(V)
    th, tW = torch.randn_like(h0), torch.randn_like(W0) * 2
    y = torch.full_like(lab, -100); y[:, :-1] = lab[:, 1:]
    liger = LigerFusedLinearJSDLoss(beta=0.0, weight_hard_loss=0.5, weight_soft_loss=0.5, compiled=CUDA, chunk_size=SIZE['chunk'])
    def ours():
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        fused_distillation_loss(h, W, lab, tg, chunk_size=SIZE['chunk'], alpha=0.5).loss.backward()
    def theirs():
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        liger(h[0], W, th[0], tW, y[0]).backward()
    res = {}
    for name, f in (('kdkit', ours), ('liger', theirs)):
        f()                                                             # warm-up (Liger: torch.compile)
        base = peak_reset(); f(); mem = peak_mb(base)
        res[name] = dict(seconds=timed(f, 3), peak_mb=mem)
    note = f'V={V}, {SIZE["tokens"]} tokens, {DT}; Liger compiled={CUDA}, beta=0, 0.5 CE + 0.5 KL at T=1, exact teacher'
    fig('kdkit_over_liger_time', res['kdkit']['seconds'] / res['liger']['seconds'], 'x', '<= 1.0', note)
    if CUDA: fig('kdkit_over_liger_peak', res['kdkit']['peak_mb'] / res['liger']['peak_mb'], 'x', '<= 1.0', note)
    return res


def teacher_and_blocks(n, seq):
    "SmolLM2-135M on the device with stdlib text blocks on a GPU; the demo teacher and corpus on CPU."
    from kdkit.data import demo_datasets, demo_tokenizer, prepare_dataset, stdlib_text
    from kdkit.models import load_demo_teacher, load_smollm2
    if CUDA:
        teacher, tok = load_smollm2(torch.bfloat16)
        blocks = prepare_dataset(stdlib_text(), tok, seq_len=seq)
        blocks = blocks.select(range(min(n, len(blocks))))
        return teacher.to(DEV), tok, blocks, 'SmolLM2-135M-Instruct (GGUF, dequantised), bf16'
    tok = demo_tokenizer()
    train, _ = demo_datasets(n_train_blocks=n, n_eval_blocks=4, seq_len=seq, tokenizer=tok)
    return load_demo_teacher(), tok, train, 'demo teacher, fp32'


def check_writer(fig, work):
    "Cache-writer tokens/s against the bare teacher forward over the same blocks."
    from kdkit.cache import TeacherLogitsGenerator
    teacher, tok, blocks, kind = teacher_and_blocks(SIZE['writer_blocks'], SIZE['writer_seq'])
    ids = torch.as_tensor(blocks['input_ids'])
    bs = 32 if CUDA else 8
    @torch.no_grad()
    def bare():
        for i in range(0, len(ids), bs): teacher(input_ids=ids[i:i + bs].to(DEV)).logits[..., :1].cpu()
    t_bare = timed(bare, 1)
    t0 = time.perf_counter()
    TeacherLogitsGenerator(teacher, tok, k=64 if CUDA else 16, batch_size=bs, progress=False).generate(blocks, work / 'writer.h5')
    t_gen = time.perf_counter() - t0
    n = ids.numel()
    fig('writer_tokens_per_s', n / t_gen, 'tokens/s', None, kind)
    fig('bare_teacher_tokens_per_s', n / t_bare, 'tokens/s', None, kind)
    fig('writer_over_bare_teacher_time', t_gen / t_bare, 'x', '<= 1.15')
    return dict(tokens=n, teacher=kind, writer_s=t_gen, bare_s=t_bare)


def check_step(fig, work):
    "Median step time of DistillationTrainer (cached; fused) against a plain CE Trainer, same student and batch."
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from kdkit.cache import CachedLogitsDataset, TeacherLogitsGenerator
    from kdkit.models import load_student_model
    from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments
    b, steps = SIZE['step_batch'], SIZE['steps']
    teacher, tok, blocks, kind = teacher_and_blocks(b * steps, SIZE['step_seq'])
    cache = CachedLogitsDataset(TeacherLogitsGenerator(teacher, tok, k=64 if CUDA else 16, progress=False).generate(blocks, work / 'step.h5'))
    student0 = load_student_model(teacher.cpu(), drop='every_other', dtype=torch.float32)
    del teacher
    class Timer(TrainerCallback):
        def __init__(self): self.t, self.last = [], None
        def on_step_begin(self, args, state, control, **kw): sync(); self.last = time.perf_counter()
        def on_step_end(self, args, state, control, **kw): sync(); self.t.append(time.perf_counter() - self.last)
    common = dict(per_device_train_batch_size=b, max_steps=steps, learning_rate=1e-5, report_to=[], disable_tqdm=True,
                  save_strategy='no', logging_steps=steps, dataloader_num_workers=0, seed=0, bf16=CUDA, use_cpu=not CUDA)
    res = {}
    for side in ('ce', 'cached', 'fused'):
        timer, student = Timer(), copy.deepcopy(student0)
        if side == 'ce':
            tr = Trainer(student, TrainingArguments(output_dir=str(work / side), **common), train_dataset=blocks,
                         data_collator=default_data_collator, callbacks=[timer])
        else:
            kw = dict(loss_chunk_size=1024) if side == 'fused' else {}
            tr = DistillationTrainer(student, DistillationTrainingArguments(output_dir=str(work / side), **common, **kw),
                                     train_dataset=cache, callbacks=[timer], processing_class=tok)
        tr.train()
        res[side] = 1e3 * statistics.median(timer.t[2:])
        fig(f'{side}_step_ms', res[side], 'ms', None, f'{kind} student (every other layer), batch {b} x {SIZE["step_seq"]}')
    fig('cached_over_ce_step', res['cached'] / res['ce'], 'x', '<= 1.15')
    fig('fused_over_ce_step', res['fused'] / res['ce'], 'x')
    return res


def fsdp_child(out):
    "Under torchrun (one process): DistillationTrainer with FSDP2 and the fused loss for a few steps; write what happened."
    from kdkit.cache import CachedLogitsDataset, TeacherLogitsGenerator
    from kdkit.models import load_student_model
    from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments
    work = Path(out).parent
    teacher, tok, blocks, kind = teacher_and_blocks(16, 256)
    cache = CachedLogitsDataset(TeacherLogitsGenerator(teacher, tok, k=64, progress=False).generate(blocks, work / 'fsdp.h5'))
    student = load_student_model(teacher.cpu(), drop='every_other', dtype=torch.float32)
    layer_cls = type(student.model.layers[0]).__name__
    res = {}
    for chunk in (None, 1024):
        args = DistillationTrainingArguments(output_dir=str(work / f'fsdp{chunk}'), per_device_train_batch_size=4, max_steps=3,
                                             learning_rate=1e-5, report_to=[], disable_tqdm=True, save_strategy='no', logging_steps=1,
                                             bf16=True, fsdp='full_shard', fsdp_config=dict(fsdp_version=2, transformer_layer_cls_to_wrap=[layer_cls]),
                                             loss_chunk_size=chunk)
        try:
            tr = DistillationTrainer(copy.deepcopy(student), args, train_dataset=cache, processing_class=tok)
            tr.train()
            res[f'loss_chunk_size={chunk}'] = dict(status='ok', losses=[e['loss'] for e in tr.state.log_history if 'loss' in e])
        except Exception as e:
            res[f'loss_chunk_size={chunk}'] = dict(status='error', error=f'{type(e).__name__}: {e}'[:1500])
    Path(out).write_text(json.dumps(res))


def check_fsdp(fig, work):
    "DistillationTrainer + FSDP2 in one torchrun process (GPU only)."
    if not CUDA: return dict(status='skipped', reason='the HF Trainer refuses FSDP without a GPU')
    out = work / 'fsdp.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', __file__, '--fsdp_child', str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    if not out.exists(): raise RuntimeError(f'fsdp child exited {r.returncode}: {r.stderr[-2000:]}')
    res = json.loads(out.read_text())
    for k, v in res.items(): fig(f'fsdp2_trainer_{k}_runs', float(v['status'] == 'ok'), 'bool', 1)
    return res


CHECKS = [('bf16', check_bf16), ('memory', check_memory), ('liger', check_liger), ('step', check_step),
          ('writer', check_writer), ('fsdp', check_fsdp)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'gpu.json') if CUDA else None)
    p.add_argument('--budget', type=float, default=420, help='seconds after which no further check starts')
    p.add_argument('--only', nargs='+', choices=[n for n, _ in CHECKS])
    p.add_argument('--fsdp_child', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.fsdp_child: return fsdp_child(a.fsdp_child)
    if a.out is None: p.error('no GPU here: pass --out (bench/results/gpu.json is for GPU results)')
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name() if CUDA else None
    figs, checks, t0 = [], {}, time.perf_counter()
    command = 'python bench/gpu_check.py' + ''.join(f' {x}' for x in sys.argv[1:])
    mach = machine()
    def fig(name, value, unit, target=None, note=None):
        figs.append(dict(name=name, value=float(f'{float(value):.5g}'), unit=unit, target=target, command=command, machine=mach,
                         **({'note': note} if note else {})))
    with tempfile.TemporaryDirectory() as td:
        for name, f in CHECKS:
            if a.only and name not in a.only: continue
            start = time.perf_counter()
            if start - t0 > a.budget:
                checks[name] = dict(status='skipped', reason=f'over the {a.budget:.0f} s budget'); continue
            try:
                d = f(fig, Path(td)) if name in ('writer', 'step', 'fsdp') else f(fig)
                checks[name] = dict(status=d.pop('status', 'ok') if isinstance(d, dict) else 'ok', details=d)
            except Exception as e:
                checks[name] = dict(status='error', error=f'{type(e).__name__}: {e}'[:2000], trace=traceback.format_exc()[-3000:])
            checks[name]['seconds'] = round(time.perf_counter() - start, 1)
            print(f'{name:7s} {checks[name]["status"]:8s} {checks[name]["seconds"]:6.1f} s', flush=True)
            if CUDA: torch.cuda.empty_cache()
    out = dict(benchmark='gpu', machine=mach, gpu=gpu, command=command, seconds=round(time.perf_counter() - t0),
               size=SIZE, dtype=str(DT), checks=checks, figures=figs)
    if not CUDA: out['note'] = 'No GPU was available: this is the CPU-sized run (small shapes, demo teacher, Liger uncompiled, no FSDP).'
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + '\n')
    for f in figs: print(f"{f['name']:36s} {f['value']:12.4f} {f['unit']}" + (f"  (target {f['target']})" if f['target'] else ''))
    print('wrote', a.out)


if __name__ == '__main__':
    main()
