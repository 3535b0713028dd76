"""Two-rank check for tests/test_fsdp.py, run with `torchrun --nproc_per_node=2` (gloo, CPU): the fused loss on the
lm_head that `kdkit.models.full_lm_head` gathers under FSDP2 (`fully_shard` on the decoder layers, optionally the
lm_head, and the root), each rank on its half of a fixed batch, against one process on the whole batch.
Writes {case: {loss, ref, max_grad_diff, ...}} as JSON to --out (rank 0)."""
import argparse, gc, json, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from kdkit.losses import fused_distillation_loss, topk_targets
from kdkit.models import full_lm_head, tiny_model

p = argparse.ArgumentParser()
p.add_argument('--out', required=True)
a = p.parse_args()
torch.set_num_threads(1)
V, B, S, H = 96, 4, 12, 32
CASES = {  # name: (tied lm_head, lm_head with a bias, how the lm_head is grouped, micro-batches per rank)
    'tied head in the root group': (True, False, 'root', 1),
    'own head group with bias': (False, True, 'own', 1),
    'accelerate layout': (False, False, 'accelerate', 1),  # embed alone; [final norm, lm_head] one group kept unsharded after forward
    'own head group, 2 accumulated micro-batches': (False, True, 'own', 2),  # gradient sync only on the last
    'through DistillationTrainer.compute_loss': (False, True, 'own', 1)}  # the trainer's own fused branch on the sharded model

def make(tie, bias):
    "The same seeded tiny Llama on every rank (a biased lm_head swapped in when asked)."
    m = tiny_model(vocab_size=V, layers=2, hidden=H, tie=tie, seed=0).train()
    if bias:
        torch.manual_seed(5)
        m.lm_head = nn.Linear(H, V, bias=True)
    return m

def batch():
    "A fixed batch with masked positions and top-8 teacher targets."
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (B, S), generator=g)
    y = x.clone(); y[0, :4] = -100; y[3, 7:] = -100
    return x, y, topk_targets(torch.randn(B, S, V, generator=g) * 3, k=8)

def trainer_step(m, x, y, t, n_items, scale):
    "DistillationTrainer.compute_loss itself (fused, loss_chunk_size=5) on the sharded model; it scales by the world size."
    import contextlib
    import kdkit.trainer as kt
    from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments
    args = DistillationTrainingArguments(output_dir=str(Path(a.out).parent / 'trainer'), use_cpu=True, report_to=[], loss_chunk_size=5, alpha=0.6)
    tr = DistillationTrainer(make(False, True), args, train_dataset=[dict(input_ids=x[0], labels=y[0], **{k: v[0] for k, v in t.items() if v.ndim > 1})])
    seen, full = [], kt.full_lm_head
    @contextlib.contextmanager
    def spy(model):
        with full(model) as head: seen.append(not isinstance(head[0], DTensor)); yield head
    kt.full_lm_head = spy
    try: loss = tr.compute_loss(m, dict(input_ids=x, labels=y, **t), num_items_in_batch=n_items)
    finally: kt.full_lm_head = full
    loss.backward()
    return loss.detach() / scale, bool(seen) and all(seen)

def step(m, x, y, t, n_items, scale=1.):
    "What DistillationTrainer's fused path does: the model's forward keeping one logit row, hidden states by hook, the loss."
    box = {}
    hook = m.get_decoder().register_forward_hook(lambda mod, args, out: box.update(h=out.last_hidden_state))
    m(input_ids=x, logits_to_keep=1); hook.remove()
    with full_lm_head(m) as (w, b):
        inside = not isinstance(w, DTensor)
        r = fused_distillation_loss(box['h'], w, y, t, lm_head_bias=b, chunk_size=5, alpha=0.6, num_items_in_batch=n_items)
    (r.loss * scale).backward()  # FSDP averages gradients over ranks; the loss is a sum / N, so scale by the world size
    return r.loss.detach(), inside

dist.init_process_group('gloo')
rank, world = dist.get_rank(), dist.get_world_size()
x, y, t = batch()
N = int((y[:, 1:] != -100).sum())  # num_items_in_batch: the valid tokens across both ranks
out = {}
for name, (tie, bias, own, micro) in CASES.items():
    ref = make(tie, bias)
    lref, _ = step(ref, x, y, t, N)
    gref = {n: q.grad for n, q in ref.named_parameters()}
    m = make(tie, bias)
    for layer in m.model.layers: fully_shard(layer)
    if own == 'own': fully_shard(m.lm_head)
    if own == 'accelerate':  # what accelerate's fsdp2_prepare_model does for an untied model
        fully_shard(m.model.embed_tokens)
        fully_shard([m.model.norm, m.lm_head], reshard_after_forward=False)
    fully_shard(m)
    per = B // world // micro
    loss = torch.zeros(())
    for j in range(micro):
        rows = slice(rank * B // world + j * per, rank * B // world + (j + 1) * per)
        part = {k: v[rows] if v.ndim > 1 else v for k, v in t.items()}
        m.set_requires_gradient_sync(j == micro - 1)  # reduce-scatter once, after the last micro-batch
        l, gathered = (trainer_step if 'Trainer' in name else step)(m, x[rows], y[rows], part, N, scale=world)
        loss += l
    sharded_after = isinstance(m.lm_head.weight, DTensor)
    dist.all_reduce(loss)
    diffs = {n: (q.grad.full_tensor() - gref[n]).abs().max().item() for n, q in m.named_parameters()}
    out[name] = dict(loss=loss.item(), ref=lref.item(), max_grad_diff=max(diffs.values()), worst=max(diffs, key=diffs.get),
                     largest_grad=max(g.abs().max().item() for g in gref.values()), grads_compared=len(diffs),
                     full_inside=gathered, sharded_after=sharded_after)
if rank == 0:
    with open(a.out, 'w') as f: json.dump(out, f, indent=1)
del m, ref; gc.collect()  # the sharded models hold the process group through their device mesh
dist.barrier(); dist.destroy_process_group()
# Skip interpreter teardown: gloo worker threads still alive then abort the process now and again
# ("terminate called without an active exception", SIGABRT), failing a run whose results are already written.
sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
