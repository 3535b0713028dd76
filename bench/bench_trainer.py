"""Training-step time of DistillationTrainer against a plain transformers Trainer doing cross-entropy, same demo
student, same data, batch 16 x 128, fp32 on CPU, side by side in one run:

  ce        - transformers.Trainer, the model's own CE loss, tokenised blocks (the reference)
  cached    - DistillationTrainer reading a k=64 HDF5 teacher cache, loss on the model's logits
  fused     - the same with loss_chunk_size=1024 (fused lm_head + loss)
  online    - DistillationTrainer with the teacher run in the loop (teacher_topk=None: all V ids, exact)

A step is the time between consecutive `on_step_end` callbacks, so it includes reading the batch (HDF5 decode for
the cache), the forward and backward passes, the optimizer step and logging. Two clocks: the process's CPU time
(one thread by default, so it is the work done and hardly moves when other processes load a shared machine) and
wall time. Sides run in alternating rounds so that load hits them alike; each figure is the median over the steps
after warm-up. Target: cached / ce <= 1.15 in CPU time. Writes bench/results/trainer.json.

    python bench/bench_trainer.py                    # 6 rounds x 5 steps per side (3 measured)
    python bench/bench_trainer.py --rounds 1 --steps 6   # a quick look
"""
import argparse, copy, json, os, statistics, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine
from kdkit.cache import CachedLogitsDataset, TeacherLogitsGenerator
from kdkit.data import demo_datasets, demo_tokenizer
from kdkit.models import load_demo_teacher, load_student_model, tiny_model
from kdkit.losses import distillation_loss
from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments, distillation_collate

class StepTimer(TrainerCallback):
    "Wall time and this process's CPU time between consecutive optimizer-step ends."
    def __init__(self): self.times, self.last = [], None
    def _now(self): return time.perf_counter(), time.process_time()
    def on_train_begin(self, args, state, control, **kw): self.last = self._now()
    def on_step_end(self, args, state, control, **kw):
        now = self._now(); self.times.append((now[0] - self.last[0], now[1] - self.last[1])); self.last = now

def teacher_model(tok):
    "The shipped demo teacher, or (before its weights exist) a random one of the same architecture: timing is the same."
    try: return load_demo_teacher(), 'demo teacher (kdkit/assets/demo)'
    except Exception:
        m = tiny_model(len(tok), layers=4, hidden=128, tie=True, intermediate_size=512, max_position_embeddings=256)
        return m, 'random-init Llama of the demo teacher shape (demo weights not found)'

def cpu_ms(f, n=10):
    "Median CPU time (ms) of `f()` over `n` calls after one warm-up."
    f(); ts = []
    for _ in range(n):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    return 1e3 * statistics.median(ts)

def breakdown(student, cache, batch, V) -> dict:
    "Where the cached step's extra time goes: reading a batch, and the loss on the same logits (KD vs CE, forward + backward)."
    import torch.nn.functional as F
    idx = list(range(batch))
    b = distillation_collate(cache.__getitems__(idx))
    targets = {k: v for k, v in b.items() if k.startswith('teacher_')}
    logits = student(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits.detach()
    def kd():
        z = logits.clone().requires_grad_(); distillation_loss(z, b['labels'], targets, vocab_size=V).loss.backward()
    def ce():
        z = logits.clone().requires_grad_()
        F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), b['labels'][:, 1:].reshape(-1), ignore_index=-100).backward()
    return dict(read_batch_cpu_ms=cpu_ms(lambda: distillation_collate(cache.__getitems__(idx)), 20),
                kd_loss_fwd_bwd_cpu_ms=cpu_ms(kd, 20), ce_loss_fwd_bwd_cpu_ms=cpu_ms(ce, 20))

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=6)
    p.add_argument('--steps', type=int, default=5, help='optimizer steps per side per round')
    p.add_argument('--warmup', type=int, default=2, help='steps dropped at the start of each round')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--seq_len', type=int, default=128)
    p.add_argument('--k', type=int, default=64)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'trainer.json'))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    command = 'python bench/bench_trainer.py' + ''.join(f' {x}' for x in sys.argv[1:] if not x.startswith('--out'))
    tok = demo_tokenizer()
    teacher, teacher_kind = teacher_model(tok)
    teacher.eval()
    student0 = load_student_model(teacher, drop='every_other')
    n_blocks = a.batch * a.steps + a.batch
    train, _ = demo_datasets(n_train_blocks=n_blocks, n_eval_blocks=4, seq_len=a.seq_len, tokenizer=tok)
    tmp = Path(tempfile.mkdtemp(prefix='kdkit-bench-'))
    t0 = time.perf_counter()
    TeacherLogitsGenerator(teacher, tok, k=a.k, progress=False).generate(train, tmp / 'cache.h5')
    cache_s = time.perf_counter() - t0
    cache = CachedLogitsDataset(tmp / 'cache.h5')
    common = dict(per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=1e-4, report_to=[], use_cpu=True,
                  disable_tqdm=True, save_strategy='no', logging_steps=a.steps, dataloader_num_workers=0, seed=0)

    def run(side):
        timer, student = StepTimer(), copy.deepcopy(student0)
        if side == 'ce':
            tr = Trainer(student, TrainingArguments(output_dir=str(tmp / side), **common), train_dataset=train,
                         data_collator=default_data_collator, callbacks=[timer])
        else:
            kw = dict(loss_chunk_size=1024) if side == 'fused' else {}
            args = DistillationTrainingArguments(output_dir=str(tmp / side), **common, **kw)
            data = dict(train_dataset=train, teacher_model=teacher) if side == 'online' else dict(train_dataset=cache)
            tr = DistillationTrainer(student, args, callbacks=[timer], processing_class=tok, **data)
        tr.train()
        return timer.times[a.warmup:]

    sides = ('ce', 'cached', 'fused', 'online')
    times = {s: [] for s in sides}
    for r in range(a.rounds):
        for s in (sides if r % 2 == 0 else sides[::-1]):
            times[s] += run(s)
            print(f'round {r} {s:7s} median cpu {1e3 * statistics.median(t[1] for t in times[s]):.1f} ms/step, '
                  f'wall {1e3 * statistics.median(t[0] for t in times[s]):.1f} ms/step', flush=True)
    med = {s: 1e3 * statistics.median(t[1] for t in v) for s, v in times.items()}         # CPU time
    wall = {s: 1e3 * statistics.median(t[0] for t in v) for s, v in times.items()}
    parts = breakdown(copy.deepcopy(student0), cache, a.batch, len(tok))
    m = machine()
    fig = lambda name, value, unit, target=None: dict(name=name, value=round(value, 4), unit=unit, target=target, command=command, machine=m)
    figures = [fig('ce_trainer_step_cpu', med['ce'], 'ms'), fig('cached_kd_step_cpu', med['cached'], 'ms'),
               fig('cached_kd_over_ce_cpu', med['cached'] / med['ce'], 'x', 1.15),
               fig('cached_fused_kd_step_cpu', med['fused'], 'ms'), fig('cached_fused_kd_over_ce_cpu', med['fused'] / med['ce'], 'x'),
               fig('online_teacher_kd_step_cpu', med['online'], 'ms'), fig('online_over_cached_cpu', med['online'] / med['cached'], 'x'),
               fig('cached_kd_over_ce_wall', wall['cached'] / wall['ce'], 'x'), fig('online_over_cached_wall', wall['online'] / wall['cached'], 'x')]
    out = dict(benchmark='trainer', machine=m, command=command,
               config=dict(batch=a.batch, seq_len=a.seq_len, k=a.k, vocab=len(tok), rounds=a.rounds, steps=a.steps,
                           warmup=a.warmup, threads=a.threads, dtype='float32', teacher=teacher_kind,
                           student_params=sum(p.numel() for p in student0.parameters()), cache_build_s=round(cache_s, 2),
                           measured_steps={s: len(v) for s, v in times.items()},
                           wall_ms=wall, breakdown=parts),
               figures=figures)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"machine: {m}")
    for f in figures: print(f"{f['name']:26s} {f['value']:10.3f} {f['unit']}" + (f"  (target <= {f['target']})" if f['target'] else ''))
    print('breakdown (CPU ms):', {k: round(v, 1) for k, v in parts.items()})
    print('wrote', a.out)

if __name__ == '__main__': main()
