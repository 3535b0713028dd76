"""Helper process for tests/test_cache.py (no tests here): builds a tiny seeded teacher and dataset and caches them.

    python tests/test_cache_worker.py OUT.h5 [--sleep S] [--mode topk|sample] [--dist]
    torchrun --nproc_per_node=2 tests/test_cache_worker.py OUT.h5 --dist
"""
import argparse, os, sys, time
import numpy as np
import torch

V, S, N = 300, 24, 40  # vocabulary, tokens per block, blocks

class ToyTokenizer:
    "A stand-in tokenizer: `len`, `get_vocab`, `decode`."
    def __init__(self, n=V): self.n, self.name_or_path = n, f'toy-{n}'
    def __len__(self): return self.n
    def get_vocab(self): return {f'tok{i}': i for i in range(self.n)}
    def decode(self, ids, **kw): return ' '.join(f'tok{i}' for i in ids)

def toy_teacher(vocab=V, seed=0, layers=2):
    "A random Llama (2 layers, hidden 64), the same for a given seed."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    m = LlamaForCausalLM(cfg).eval()
    m.config.name_or_path = f'toy-llama-{vocab}'
    return m

def toy_data(n=N, seq_len=S, vocab=V, seed=0):
    "Random blocks with a masked 'prompt' and some padding, as a dict of arrays."
    g = np.random.default_rng(seed)
    x = g.integers(0, vocab, (n, seq_len))
    m = np.ones_like(x); m[1::5, -4:] = 0
    y = np.where(m > 0, x, -100); y[::3, :5] = -100
    return dict(input_ids=x, attention_mask=m, labels=y)

class SlowTeacher(torch.nn.Module):
    "Wraps a teacher and sleeps before each forward, so a kill can land anywhere."
    def __init__(self, m, sleep): super().__init__(); self.m, self.sleep, self.config = m, sleep, m.config
    def get_output_embeddings(self): return self.m.get_output_embeddings()
    def forward(self, **kw): time.sleep(self.sleep); return self.m(**kw)

def make_generator(mode='topk', sleep=0.0, **kw):
    from kdkit.cache import TeacherLogitsGenerator
    t = toy_teacher()
    if sleep: t = SlowTeacher(t, sleep)
    kw = dict(dict(k=16, temperatures=(1.0, 2.0) if mode == 'topk' else (1.0,), batch_size=3, segment_size=4, n_samples=20, seed=5, progress=False), **kw)
    return TeacherLogitsGenerator(t, ToyTokenizer(), mode=mode, **kw)

if __name__ == '__main__':
    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument('out'); p.add_argument('--sleep', type=float, default=0.0); p.add_argument('--mode', default='topk')
    p.add_argument('--dist', action='store_true', help='init a gloo process group (under torchrun)')
    a = p.parse_args()
    if a.dist:
        import torch.distributed as dist
        dist.init_process_group('gloo')
    gen, data = make_generator(a.mode, a.sleep), toy_data()
    print('READY', flush=True)  # imports done: the kill tests time their kills from here
    gen.generate(data, a.out)
    print('DONE', os.environ.get('RANK', '0'), flush=True)
    if a.dist: dist.destroy_process_group()
