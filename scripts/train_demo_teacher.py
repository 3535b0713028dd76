"""Train kdkit's demo teacher and write it, with the demo tokenizer, to kdkit/assets/demo.

Reproducible: fixed seeds, the generated corpus (seed 0) and the tokenizer trained on it.
    python scripts/train_demo_teacher.py [--steps 600] [--out kdkit/assets/demo]
Prints held-out CE against the corpus's unigram entropy as it goes.
"""
import argparse, json, math, time
from pathlib import Path
import torch
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup
from kdkit.data import demo_corpus, prepare_dataset, train_demo_tokenizer, unigram_entropy
from kdkit.models import evaluate_distillation

def heldout_ce(model, ds): return evaluate_distillation(model, None, ds)['ce']

def teacher_config(vocab_size):
    "The demo teacher's architecture: Llama, 4 layers, hidden 128, tied embeddings."
    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1)

def main(minutes=60.0, out='kdkit/assets/demo', steps=600, batch_size=16, seq_len=128, lr=3e-3, threads=2):
    torch.manual_seed(0); torch.set_num_threads(threads)
    tok = train_demo_tokenizer()
    train = prepare_dataset(demo_corpus(60_000, seed=0), tok, seq_len=seq_len).with_format('torch')
    heldout = prepare_dataset(demo_corpus(400, seed=12345), tok, seq_len=seq_len)
    model = LlamaForCausalLM(teacher_config(len(tok)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = get_cosine_schedule_with_warmup(opt, 50, steps)
    g = torch.Generator().manual_seed(0)
    t0, step = time.time(), 0
    while step < steps and time.time() - t0 < minutes * 60:
        model.train()
        idx = torch.randint(len(train), (batch_size,), generator=g)
        b = train[idx]
        loss = model(input_ids=b['input_ids'].long(), attention_mask=b['attention_mask'].long(), labels=b['labels'].long()).loss
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(); step += 1
        if step % 100 == 0: print(f'step {step} train {loss.item():.3f} held-out {heldout_ce(model, heldout):.3f} ({time.time()-t0:.0f}s)', flush=True)
    ce, h = heldout_ce(model, heldout), unigram_entropy(heldout)
    print(f'final: {step} steps, held-out CE {ce:.3f} nats, unigram entropy {h:.3f} nats')
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out); tok.save_pretrained(out)
    (out/'training.json').write_text(json.dumps({'steps': step, 'heldout_ce': round(ce, 4), 'unigram_entropy': round(h, 4),
        'batch_size': batch_size, 'seq_len': seq_len, 'lr': lr, 'command': 'python scripts/train_demo_teacher.py'}, indent=1))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, default=60.0, help='wall-clock budget (the cosine schedule assumes all steps run)')
    p.add_argument('--steps', type=int, default=600, help='optimizer steps (cosine schedule length)')
    p.add_argument('--out', default='kdkit/assets/demo')
    a = p.parse_args()
    main(a.minutes, a.out, a.steps)
