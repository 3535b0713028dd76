"""Reduced precision: every loss (sparse `distillation_loss`, `fused_distillation_loss`, `dense_distillation_loss`) under
CPU autocast in bf16 and fp16 against an fp32 reference, and the fp32-accumulation contract.

What these tests prove, and what they do not:
- The loss arithmetic runs in fp32: under autocast the loss on half-precision logits equals, to 1e-6, the fp32 loss of
  the same logits cast up (a half-precision log-softmax would be off by ~1e-2). So the only error autocast adds is
  the rounding of the logits themselves (the lm_head matmul), which the tests bound against a pure fp32 run.
- No [B,S,V] fp32 upcast: a dispatch-level recorder sees every tensor that an aten op returns during the loss's
  forward and backward (autocast's casts included) and the fp32 ones as wide as the vocabulary have one chunk of rows, not the batch's;
  a control shows the recorder does catch the dense loss's full upcast. It does not see memory a kernel allocates
  internally without returning it, and it measures tensors, not the allocator's peak.
"""
import pytest, torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from kdkit.losses import dense_distillation_loss, distillation_loss, fused_distillation_loss, topk_targets

B, S, H, V, CHUNK = 2, 32, 16, 2000, 16     # N = 64 tokens; a chunk of logits is a quarter of the batch's
DTYPES = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: (2e-2, 0.999), torch.float16: (3e-3, 0.99995)}  # loss rel. error, gradient cosine vs fp32

def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, S, H, generator=g)
    W = torch.randn(V, H, generator=g) / 2
    lab = torch.randint(0, V, (B, S), generator=g); lab[0, :5] = -100
    zt = torch.randn(B, S, V, generator=g) * 2
    return h, W, lab, zt

class FullRows(TorchDispatchMode):
    "Record the most rows of vocabulary-wide (last dim V or V+1) fp32/fp64 tensors any aten op returns (forward, backward, casts)."
    def __init__(self): super().__init__(); self.biggest = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float64) and t.ndim and t.shape[-1] in (V, V + 1):
                self.biggest = max(self.biggest, t.numel() // t.shape[-1])
        return out

def run(kind, h, W, lab, zt, autocast_dtype=None, record=False):
    "Loss and gradients (h, W) of one loss, optionally under CPU autocast; the lm_head matmul is inside the autocast region."
    h, W = h.clone().requires_grad_(), W.clone().requires_grad_()
    tg = topk_targets(zt, 32)
    rec = FullRows()
    with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        if kind == 'fused':
            with rec if record else torch.enable_grad():
                r = fused_distillation_loss(h, W, lab, tg, chunk_size=CHUNK)
                r.loss.backward()
            return r, h.grad, W.grad, rec.biggest, None
        z = F.linear(h, W)                                                     # [B,S,V] half under autocast
        z.retain_grad()
        with rec if record else torch.enable_grad():
            r = (distillation_loss(z, lab, tg, chunk_size=CHUNK) if kind == 'sparse' else dense_distillation_loss(z, zt.to(z.dtype), lab))
            r.loss.backward()                                                  # stops at z's grad inside the recorder
    return r, h.grad, W.grad, rec.biggest, z

@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('kind', ['sparse', 'fused', 'dense'])
def test_autocast_matches_fp32(kind, dtype):
    h, W, lab, zt = problem()
    ref, gh, gW, _, _ = run(kind, h, W, lab, zt)
    lo, lh, lW, _, z = run(kind, h, W, lab, zt, autocast_dtype=dtype)
    if z is not None: assert z.dtype == dtype                               # the logits really are half precision
    assert lo.loss.dtype == torch.float32 and lh.dtype == gh.dtype == torch.float32
    rel, cos = TOL[dtype]
    assert abs(lo.loss.item() - ref.loss.item()) < rel * abs(ref.loss.item()), (lo.loss, ref.loss)
    for a, b in ((lh, gh), (lW, gW)): assert F.cosine_similarity(a.flatten(), b.flatten(), 0) > cos

@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('kind', ['sparse', 'dense'])
def test_half_logits_get_fp32_arithmetic(kind, dtype):
    "On the same half logits, the autocast loss equals the fp32 loss of those logits cast up: no half-precision arithmetic."
    h, W, lab, zt = problem(1)
    lo, *_, z = run(kind, h, W, lab, zt, autocast_dtype=dtype)
    tg = topk_targets(zt, 32)
    up = z.detach().float()
    ref = distillation_loss(up, lab, tg, chunk_size=CHUNK) if kind == 'sparse' else dense_distillation_loss(up, zt.to(dtype).float(), lab)
    torch.testing.assert_close(lo.loss, ref.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(lo.kd, ref.kd, rtol=1e-5, atol=1e-8)

@pytest.mark.parametrize('dtype', DTYPES)
def test_no_full_fp32_upcast(dtype):
    "Sparse and fused losses: fp32 vocabulary-wide tensors hold at most one chunk of rows ([CHUNK, V]), never the batch's [B*S, V]."
    h, W, lab, zt = problem(2)
    for kind in ('sparse', 'fused'):
        rows = run(kind, h, W, lab, zt, autocast_dtype=dtype, record=True)[3]
        assert rows == CHUNK, (kind, rows)
    # control: the dense oracle upcasts every scored row at once, and the recorder sees it
    n_scored = int((lab[:, 1:] != -100).sum())
    assert run('dense', h, W, lab, zt, autocast_dtype=dtype, record=True)[3] == n_scored > 3 * CHUNK
