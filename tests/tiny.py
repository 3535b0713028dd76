"""Shared tiny fixtures for tests and their worker processes: a stand-in tokenizer, seeded tiny models and random
token blocks. Import it as `from tiny import ...` (pytest puts tests/ on the path; worker scripts run from here)."""
import numpy as np
from kdkit.models import tiny_model

V, S, N = 300, 24, 40  # the toy vocabulary, tokens per block, blocks

class ToyTokenizer:
    "A stand-in tokenizer: `len`, `get_vocab`, `decode`."
    def __init__(self, n=V): self.n, self.name_or_path = n, f'toy-{n}'
    def __len__(self): return self.n
    def get_vocab(self): return {f'tok{i}': i for i in range(self.n)}
    def decode(self, ids, **kw): return ' '.join(f'tok{i}' for i in ids)

def tiny_llama(vocab=V, layers=2, seed=0, tie=False, **config):
    "A seeded Llama with hidden 64, named after its vocabulary (so that caches record a teacher name)."
    m = tiny_model(vocab_size=vocab, layers=layers, hidden=64, tie=tie, seed=seed, **config)
    m.config.name_or_path = f'toy-llama-{vocab}'
    return m

def toy_blocks(n=N, seq_len=S, vocab=V, seed=0) -> dict:
    "Random blocks with a masked 'prompt' and some padding, as a dict of arrays."
    g = np.random.default_rng(seed)
    x = g.integers(0, vocab, (n, seq_len))
    m = np.ones_like(x); m[1::5, -4:] = 0
    y = np.where(m > 0, x, -100); y[::3, :5] = -100
    return dict(input_ids=x, attention_mask=m, labels=y)
