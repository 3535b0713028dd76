"""Hidden-state distillation against KD alone, at equal steps: a layer-dropped student healed by DistillationTrainer
with the online teacher (all V ids, exact forward KL, alpha 0.5, T 1), once with KD alone (hidden_weight 0) and once
with KD + HS (hidden_weight w, "auto" pairs from the student's recorded origin, cosine), same seed, data, steps and
learning rate. Held-out CE, KL(teacher || student) and top-1 agreement (kdkit.models.evaluate_distillation) before
training and after each arm; the better arm on held-out KL is named.

  demo     - the demo teacher (Llama, 4 layers, hidden 128), drop second_half, demo corpus blocks of 128 tokens
  smollm2  - SmolLM2-135M-Instruct (30 layers), drop last:7 (a quarter of its layers), demo corpus text

Writes bench/results/hidden.json (one entry per model, the other entries kept).

    python bench/bench_hidden.py                                # demo, 60 steps, batch 8
    python bench/bench_hidden.py --model smollm2 --steps 30 --batch 4 --seq_len 64
"""
import argparse, json, os, sys, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import machine
from kdkit.data import demo_datasets, demo_tokenizer
from kdkit.models import evaluate_distillation, load_demo_teacher, load_student_model
from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments

DROPS = {'demo': 'second_half', 'smollm2': 'last:7'}

def models(name):
    "(teacher, tokenizer) of a model name."
    if name == 'demo': return load_demo_teacher(), demo_tokenizer()
    from kdkit.models import load_smollm2
    teacher, tok = load_smollm2()
    return teacher.eval(), tok

def metrics(student, teacher, held, V):
    r = evaluate_distillation(student, teacher, held, batch_size=8, vocab_size=V)
    return {k: round(float(v), 4) for k, v in r.items() if isinstance(v, (int, float))}

def arm(teacher, train, held, V, drop, weight, a, out):
    "Heal a fresh student for a.steps steps with hidden_weight=weight; its held-out metrics and seconds."
    student = load_student_model(teacher, drop=drop).requires_grad_(True)
    args = DistillationTrainingArguments(output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=a.lr,
                                         warmup_steps=0.1, logging_steps=max(a.steps // 4, 1), save_strategy='no', report_to=[], use_cpu=True,
                                         disable_tqdm=True, seed=0, data_seed=0, alpha=0.5, hidden_weight=weight, hidden_loss='cosine')
    tr = DistillationTrainer(student, args, train_dataset=train, teacher_model=teacher)
    t0 = time.perf_counter(); tr.train(); secs = time.perf_counter() - t0
    logs = [e for e in tr.state.log_history if 'loss' in e]
    return dict(hidden_weight=weight, pairs=tr._hidden_term().pairs if weight else None, seconds=round(secs, 1),
                last_log={k: round(v, 4) for k, v in logs[-1].items() if k in ('loss', 'ce_loss', 'kd_loss', 'hidden_loss')},
                held_out=metrics(student, teacher, held, V))

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--model', default='demo', choices=sorted(DROPS))
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--seq_len', type=int, default=128)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--weight', type=float, default=1.0, help='hidden_weight of the KD + HS arm')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'hidden.json'))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    teacher, tok = models(a.model)
    teacher.requires_grad_(False)
    V, drop = len(tok), DROPS[a.model]
    train, held = demo_datasets(n_train_blocks=a.steps * a.batch, n_eval_blocks=32, seq_len=a.seq_len, tokenizer=tok)
    import tempfile
    tmp = Path(tempfile.mkdtemp())
    start = metrics(load_student_model(teacher, drop=drop), teacher, held, V)
    res = dict(teacher_held_out=metrics(teacher, None, held, V), student_before=start,
               kd=arm(teacher, train, held, V, drop, 0.0, a, tmp / 'kd'),
               kd_hs=arm(teacher, train, held, V, drop, a.weight, a, tmp / 'kdhs'))
    kd, hs = res['kd']['held_out'], res['kd_hs']['held_out']
    key = 'kl' if 'kl' in kd else next(k for k in kd if 'kl' in k)
    res['winner_on_kl'] = 'kd_hs' if hs[key] < kd[key] else 'kd'
    res.update(model=a.model, drop=drop, steps=a.steps, batch=a.batch, seq_len=a.seq_len, lr=a.lr, machine=machine(),
               command=f'python bench/bench_hidden.py --model {a.model} --steps {a.steps} --batch {a.batch} --seq_len {a.seq_len} --weight {a.weight}')
    out = Path(a.out)
    allres = json.loads(out.read_text()) if out.is_file() else {}
    allres[a.model] = res
    out.write_text(json.dumps(allres, indent=1) + '\n')
    print(json.dumps(res, indent=1))

if __name__ == '__main__': main()
