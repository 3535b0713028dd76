"""Hidden-state distillation through DistillationTrainer: the term against an independent formula (value and gradient),
hidden_weight=0 identical to the plain loss, "auto" pairs from the recorded origin, the fused path, cached teacher_hidden,
projections saved and reloaded, and bad pairs named in the error."""
import math
import pytest, torch
from kdkit.cache import CachedLogitsDataset, TeacherLogitsGenerator
from kdkit.data import demo_corpus, demo_tokenizer, prepare_dataset
from kdkit.hidden import PROJECTIONS_FILE, load_projections
from kdkit.losses import distillation_loss, topk_targets
from kdkit.models import load_student_model, tiny_model
from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments, Stage, distillation_collate, run_stages

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tok = demo_tokenizer(); V = len(tok)
    teacher = tiny_model(V, layers=4, hidden=32, seed=0)
    blocks = prepare_dataset(demo_corpus(16, seed=0), tok, seq_len=24)
    tmp = tmp_path_factory.mktemp('hid')
    cache = CachedLogitsDataset(TeacherLogitsGenerator(teacher, tok, k=8, progress=False).generate(blocks, tmp / 'c.h5'))
    return tok, V, teacher, blocks, cache, tmp

def pruned(teacher, drop):
    "A student cut from `teacher`, trainable (a copy of a frozen teacher is frozen too)."
    return load_student_model(teacher, drop=drop).requires_grad_(True)

def targs(tmp, name, **kw):
    return DistillationTrainingArguments(output_dir=str(tmp / name), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
                                         use_cpu=True, disable_tqdm=True, logging_steps=1, alpha=0.5, **{'save_steps': 100, **kw})

def batch(blocks, n=4):
    b = {k: torch.tensor(blocks[:n][k]) for k in ('input_ids', 'labels')}
    b['labels'][0, :7] = -100   # some rows unscored
    return b

class HiddenCache(torch.utils.data.Dataset):
    "Cache items plus `teacher_hidden` [L,S,H] of teacher layers `hidden_layers` (what a cache with hidden states yields)."
    def __init__(self, cache, teacher, layers):
        from kdkit.hidden import layer_outputs
        self.cache, self.hidden_layers, self.metadata, self.teacher_num_layers = cache, list(layers), cache.metadata, 4
        ids = torch.stack([cache[i]['input_ids'] for i in range(len(cache))])
        with torch.no_grad(), layer_outputs(teacher, layers) as got: teacher(input_ids=ids)
        self.th = torch.stack([got[t] for t in layers], 1)                           # [N,L,S,H]
    def __len__(self): return len(self.cache)
    def __getitem__(self, i): return {**self.cache[i], 'teacher_hidden': self.th[i]}

def independent_hs(student, teacher, b, pairs, N):
    "sum over pairs and scored rows of 1 - cos(h_s, h_t), over N, from output_hidden_states: hidden_states[i+1] = layer i (not the last), -1 = final norm."
    hs = student(input_ids=b['input_ids'], output_hidden_states=True).hidden_states
    with torch.no_grad(): ht = teacher(input_ids=b['input_ids'], output_hidden_states=True).hidden_states
    scored = (b['labels'][:, 1:] != -100)                                              # row t scored by labels[t+1]
    scored = torch.cat([scored, torch.zeros_like(scored[:, :1])], 1)                   # [B,S]
    total = 0.
    for s, t in pairs:
        x, y = hs[s + 1 if s >= 0 else -1], ht[t + 1 if t >= 0 else -1]
        cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
        total = total + ((1 - cos) * scored).sum()
    return total / N

def test_hidden_weight_zero_is_the_plain_loss(setup):
    "hidden_weight=0 (pairs given or not): the loss is bit-identical to distillation_loss on the student's logits."
    tok, V, teacher, blocks, cache, tmp = setup
    student = pruned(teacher, 'every_other')
    items = [cache[i] for i in range(4)]
    b = distillation_collate(items)
    ref_targets = {k: v for k, v in b.items() if k.startswith('teacher_')}
    with torch.no_grad(): ref = distillation_loss(student(input_ids=b['input_ids']).logits, b['labels'], ref_targets, alpha=0.5, vocab_size=V).loss
    for kw in ({}, dict(hidden_weight=0.0, hidden_layers=[[0, 1]], hidden_loss='mse')):
        tr = DistillationTrainer(student, targs(tmp, 'w0', **kw), train_dataset=cache)
        assert tr._hidden_term() is None
        with torch.no_grad(): got = tr.compute_loss(tr.model, dict(b))
        assert torch.equal(got, ref)

@pytest.mark.parametrize('chunk', [None, 16])
def test_online_term_and_gradient_against_independent_formula(setup, chunk):
    "Online teacher, pairs incl. -1: loss = plain + w * HS and its gradient equal an independent output_hidden_states formula."
    tok, V, teacher, blocks, cache, tmp = setup
    student = pruned(teacher, 'second_half').train()
    pairs, w = [[0, 1], [0, 2], [-1, -1]], 0.7
    tr = DistillationTrainer(student, targs(tmp, f'g{chunk}', hidden_weight=w, hidden_layers=pairs, loss_chunk_size=chunk),
                             train_dataset=blocks, teacher_model=teacher)
    b = batch(blocks); N = int((b['labels'][:, 1:] != -100).sum())
    student.zero_grad(); loss = tr.compute_loss(tr.model, dict(b), num_items_in_batch=N); loss.backward()
    g = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()
    with torch.no_grad(): targets = topk_targets(teacher(input_ids=b['input_ids']).logits[..., :V], V, temperatures=[1.0])
    ref = distillation_loss(student(input_ids=b['input_ids']).logits, b['labels'], targets, alpha=0.5, vocab_size=V, num_items_in_batch=N).loss
    ref = ref + w * independent_hs(student, teacher, b, pairs, N)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    for n, p in student.named_parameters():
        assert torch.allclose(g[n], p.grad, atol=1e-5, rtol=1e-4), n

def test_auto_pairs_from_origin(setup):
    "'auto' through the trainer: every_other, second_half and an explicit list; layer i meets origin(i+1) - 1, the last meets the teacher's last."
    tok, V, teacher, blocks, cache, tmp = setup
    t6 = tiny_model(V, layers=6, hidden=32, seed=0)
    for drop, want in (('every_other', [[0, 1], [1, 3], [2, 5]]), ('second_half', [[0, 0], [1, 1], [2, 5]])):
        st = load_student_model(t6, drop=drop)
        o = st.config.kdkit_teacher_layers
        assert want == [[i, o[i + 1] - 1] for i in range(len(o) - 1)] + [[len(o) - 1, 5]], (drop, o)
        tr = DistillationTrainer(st, targs(tmp, 'auto', hidden_weight=1.0), train_dataset=blocks, teacher_model=t6)
        assert tr._hidden_term().pairs == want, drop
    st = pruned(t6, 'every_other')
    tr = DistillationTrainer(st, targs(tmp, 'auto', hidden_weight=1.0, hidden_layers='[[0, 0], [2, -1]]'), train_dataset=blocks, teacher_model=t6)
    assert tr._hidden_term().pairs == [[0, 0], [2, -1]]
    assert (tr._hidden_term().student_layers, tr._hidden_term().teacher_layers) == ([0, 2], [0, -1])

def test_cached_teacher_hidden_equals_online(setup):
    "A dataset yielding teacher_hidden (layers looked up in its hidden_layers) gives the online teacher's term; logged and evaluated."
    tok, V, teacher, blocks, cache, tmp = setup
    student = pruned(teacher, 'every_other')
    pairs = [[0, 1], [-1, -1]]
    hc = HiddenCache(cache, teacher, [2, -1, 1])                  # stored in another order than the pairs
    tr = DistillationTrainer(student, targs(tmp, 'cached', hidden_weight=1.0, hidden_layers=pairs, max_steps=2), train_dataset=hc, eval_dataset=hc)
    b = distillation_collate([hc[i] for i in range(4)])
    with torch.no_grad(): loss = tr.compute_loss(tr.model, dict(b))
    plain = {k: v for k, v in b.items() if k != 'teacher_hidden'}
    tr0 = DistillationTrainer(student, targs(tmp, 'c0'), train_dataset=cache)
    with torch.no_grad(): l0 = tr0.compute_loss(tr0.model, dict(plain))
    hs = independent_hs(student, teacher, b, pairs, int((b['labels'][:, 1:] != -100).sum())).detach()
    assert float(loss) == pytest.approx(float(l0 + hs), rel=1e-5)
    tr.train()
    logs = [e for e in tr.state.log_history if 'loss' in e]
    assert all(e['hidden_loss'] > 0 and e['loss'] == pytest.approx(e['ce_loss'] * 0.5 + e['kd_loss'] * 0.5 + e['hidden_loss'], rel=1e-4) for e in logs)
    ev = tr.evaluate()
    assert ev['eval_hidden_loss'] > 0 and math.isfinite(ev['eval_top1_agreement'])

def test_bad_pairs_named(setup):
    "No source, a cache without hidden states, a layer out of range, a layer the cache lacks, a bad stage: errors naming them."
    tok, V, teacher, blocks, cache, tmp = setup
    st = pruned(teacher, 'every_other')
    with pytest.raises(ValueError, match=r'train_dataset has teacher targets but no teacher hidden states'):
        DistillationTrainer(st, targs(tmp, 'bad', hidden_weight=1.0), train_dataset=cache)
    with pytest.raises(ValueError, match=r'pair \[0, 7\]: teacher layer 7 is outside \[-1, 4\)'):
        DistillationTrainer(st, targs(tmp, 'bad', hidden_weight=1.0, hidden_layers=[[0, 7]]), train_dataset=blocks, teacher_model=teacher)
    with pytest.raises(ValueError, match=r'pair \[5, 1\]: student layer 5 is outside \[-1, 2\)'):
        DistillationTrainer(st, targs(tmp, 'bad', hidden_weight=1.0, hidden_layers=[[5, 1]]), train_dataset=blocks, teacher_model=teacher)
    hc = HiddenCache(cache, teacher, [1, 3])
    with pytest.raises(ValueError, match=r'pairs \[\[1, 2\]\]: teacher layer\(s\) \[2\] not in train_dataset, which holds .* teacher layers \[1, 3\]'):
        DistillationTrainer(st, targs(tmp, 'bad', hidden_weight=1.0, hidden_layers=[[0, 1], [1, 2]]), train_dataset=hc)
    with pytest.raises(ValueError, match='hidden_layers must be'):
        targs(tmp, 'bad', hidden_weight=1.0, hidden_layers='[[0, 1, 2]]')
    with pytest.raises(ValueError, match="hidden_loss must be one of"):
        Stage('heal', max_steps=1, hidden_loss='l1')
    tr = DistillationTrainer(st, targs(tmp, 'stage'), train_dataset=hc)   # off in the arguments, on in stage 2 with a pair the cache lacks
    stages = [Stage('a', max_steps=1), Stage('b', max_steps=1, hidden_weight=1.0, hidden_layers=[[0, 0]])]
    with pytest.raises(ValueError, match=r"stage 2 \('b'\): hidden_layers pairs \[\[0, 0\]\]: teacher layer\(s\) \[0\] not in"):
        run_stages(tr, stages)
    assert tr.state.global_step == 0   # nothing trained

def test_projection_trains_saves_and_reloads(setup):
    "A narrower student: projections in the optimizer, trained, saved beside the checkpoint (not in the student), reloaded on resume."
    tok, V, teacher, blocks, cache, tmp = setup
    st = tiny_model(V, layers=2, hidden=16, seed=1)
    kw = dict(hidden_weight=1.0, hidden_layers=[[0, 1], [1, 3]], hidden_projection=True, max_steps=2, save_steps=2)
    with pytest.raises(ValueError, match='set hidden_projection=True'):
        DistillationTrainer(st, targs(tmp, 'np', hidden_weight=1.0, hidden_layers=[[0, 1]]), train_dataset=blocks, teacher_model=teacher)
    tr = DistillationTrainer(st, targs(tmp, 'proj', **kw), train_dataset=blocks, teacher_model=teacher)
    proj = tr._hidden_term().projections
    w0 = [p.detach().clone() for p in proj.parameters()]
    tr.train()
    assert any(g['name'] == 'hidden_projections' for g in tr.optimizer.param_groups)
    assert all(not torch.equal(a, p) for a, p in zip(w0, proj.parameters()))          # trained
    ck = tmp / 'proj' / 'checkpoint-2'
    assert (ck / PROJECTIONS_FILE).is_file()
    saved = load_projections(ck)
    assert all(torch.equal(a, b) for a, b in zip(saved.parameters(), proj.parameters()))
    from safetensors.torch import load_file
    assert not any('maps' in k or 'proj' in k.split('.')[0] for k in load_file(ck / 'model.safetensors'))
    assert set(load_file(ck / 'model.safetensors')) <= set(st.state_dict())
    tr2 = DistillationTrainer(tiny_model(V, layers=2, hidden=16, seed=1), targs(tmp, 'proj2', **kw), train_dataset=blocks, teacher_model=teacher)
    tr2._load_from_checkpoint(str(ck))
    assert all(torch.equal(a, b) for a, b in zip(tr2._hidden_term().parameters(), proj.parameters()))

def test_real_cache_with_hidden_states(setup):
    "A cache written with hidden_layers (bf16 teacher_hidden): the trainer's term matches the fp32 states within bf16 rounding; training logs it."
    tok, V, teacher, blocks, cache, tmp = setup
    path = TeacherLogitsGenerator(teacher, tok, k=8, progress=False, hidden_layers=[3, 1]).generate(blocks, tmp / 'h.h5')
    hcache = CachedLogitsDataset(path)
    assert list(hcache.hidden_layers) == [3, 1]
    # the cache records the teacher's depth, so "auto" needs no online teacher: every_other of 4 layers -> [[0, 1], [1, 3]]
    assert hcache.metadata['teacher_num_layers'] == 4
    auto = DistillationTrainer(pruned(teacher, 'every_other'), targs(tmp, 'realauto', hidden_weight=1.0), train_dataset=hcache)
    assert auto._hidden_term().pairs == [[0, 1], [1, 3]]
    st = pruned(teacher, 'every_other')
    kw = dict(hidden_weight=1.0, hidden_layers=[[0, 1], [1, 3]], hidden_loss='mse')
    tr = DistillationTrainer(st, targs(tmp, 'real', max_steps=2, **kw), train_dataset=hcache, eval_dataset=hcache)
    ref = DistillationTrainer(st, targs(tmp, 'realref', **kw), train_dataset=HiddenCache(cache, teacher, [3, 1]))
    b = distillation_collate([hcache[i] for i in range(4)])
    assert b['teacher_hidden'].shape[:2] == (4, 2)
    r = distillation_collate([ref.train_dataset[i] for i in range(4)])
    with torch.no_grad(): got, want = tr.compute_loss(tr.model, dict(b)), ref.compute_loss(ref.model, dict(r))
    assert float(got) == pytest.approx(float(want), rel=2e-2)
    with pytest.raises(ValueError, match=r'teacher layer\(s\) \[2\] not in train_dataset, which holds the hidden states of teacher layers \[3, 1\]'):
        DistillationTrainer(st, targs(tmp, 'realbad', hidden_weight=1.0, hidden_layers=[[0, 2]]), train_dataset=hcache)
    tr.train()
    assert all(e['hidden_loss'] > 0 for e in tr.state.log_history if 'loss' in e)
    assert tr.evaluate()['eval_hidden_loss'] > 0
