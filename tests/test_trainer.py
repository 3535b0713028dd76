"""DistillationTrainer in one process: arguments (CLI, dict, YAML, bad values), gradient accumulation, online teacher vs a
k = V cache vs the dense oracle, logging, evaluation, padded vocabularies, save/reload, stages, bad input."""
import json, math
import numpy as np
import pytest, torch
from transformers import AutoModelForCausalLM, HfArgumentParser, TrainerCallback
from kdkit.cache import CacheError, CachedLogitsDataset, TeacherLogitsGenerator
from kdkit.data import demo_corpus, demo_tokenizer, prepare_dataset, train_demo_tokenizer
from kdkit.losses import dense_distillation_loss
from tiny import tiny_llama
from kdkit.trainer import (DistillationTrainer, DistillationTrainingArguments, Stage, distillation_collate,
                           evaluate_distillation, run_stages)

torch.set_num_threads(1)

def llama(V, layers, seed): return tiny_llama(V, layers, seed=seed)

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "Tokenizer, teacher, tokenised blocks with ragged label masks, and two caches (k=16, k=V) of them."
    tok = demo_tokenizer(); V = len(tok)
    teacher = llama(V, 2, 0)
    ds = prepare_dataset(demo_corpus(30, seed=0), tok, seq_len=32)
    rng = np.random.default_rng(0)
    cuts = rng.integers(0, 28, len(ds))       # each block loses a different prefix: micro-batches differ in valid tokens
    ds = ds.map(lambda r, i: {'labels': [-100] * int(cuts[i]) + list(r['labels'])[int(cuts[i]):]}, with_indices=True)
    d = tmp_path_factory.mktemp('caches')
    k16 = TeacherLogitsGenerator(teacher, tok, k=16, temperatures=(1.0, 2.0), progress=False).generate(ds, d / 'k16.h5')
    kV = TeacherLogitsGenerator(teacher, tok, k=V, value_bits=8, progress=False).generate(ds, d / 'kV.h5')
    return dict(tok=tok, V=V, teacher=teacher, ds=ds, k16=CachedLogitsDataset(k16), kV=CachedLogitsDataset(kV))

def targs(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / 'out'), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], use_cpu=True,
                disable_tqdm=True, save_strategy='no', logging_steps=1, seed=0, max_steps=2)
    return DistillationTrainingArguments(**{**base, **kw})

class Grads(TrainerCallback):
    "Copies of every trainable gradient just before each optimizer step."
    def __init__(self): self.steps = []
    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

# ---------------------------------------------------------------- arguments
def test_arguments_parse_cli_dict_yaml(tmp_path):
    rules = [{'name': 'emb', 'pattern': 'embed', 'lr_multiplier': 0}, {'pattern': r'layers\.1\.', 'lr_multiplier': 2.0}]
    p = HfArgumentParser(DistillationTrainingArguments)
    a, = p.parse_args_into_dataclasses(['--output_dir', str(tmp_path), '--alpha', '0.3', '--temperature', '2', '--kd_tail', 'renorm',
                                         '--lr_rules', json.dumps(rules), '--loss_chunk_size', '256', '--teacher_topk', '8', '--use_cpu'])
    assert (a.alpha, a.temperature, a.kd_tail, a.lr_rules, a.loss_chunk_size, a.teacher_topk) == (0.3, 2.0, 'renorm', rules, 256, 8)
    b, = p.parse_dict(dict(output_dir=str(tmp_path), alpha=0.3, lr_rules=rules, use_cpu=True))
    assert b.lr_rules == rules and b.loss_chunk_size is None and b.kd_tail == 'bucket'
    y = tmp_path / 'a.yaml'
    y.write_text(f"output_dir: {tmp_path}\nalpha: 0.9\nuse_cpu: true\nlr_rules:\n  - {{pattern: embed, lr_multiplier: 0, name: emb}}\n")
    c, = p.parse_yaml_file(str(y))
    assert c.alpha == 0.9 and c.lr_rules == [{'pattern': 'embed', 'lr_multiplier': 0, 'name': 'emb'}]

@pytest.mark.parametrize('kw,msg', [(dict(alpha=1.5), 'alpha'), (dict(alpha=-0.1), 'alpha'), (dict(temperature=0), 'temperature'),
                                    (dict(temperature=float('nan')), 'temperature'), (dict(kd_tail='drop'), 'kd_tail'),
                                    (dict(lr_rules='[{"pattern": "x"'), 'lr_rules'), (dict(lr_rules=[{'pattern': '(', 'lr_multiplier': 1}]), 'regex'),
                                    (dict(lr_rules=[{'pattern': 'x', 'lr_multiplier': -1}]), 'lr_multiplier'),
                                    (dict(loss_chunk_size=0), 'loss_chunk_size'), (dict(teacher_topk=0), 'teacher_topk')])
def test_bad_arguments_name_the_field(tmp_path, kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg): DistillationTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kw)

def test_stage_from_dict_and_bad_stages():
    s = Stage.from_dict(dict(name='heal', max_steps=5, alpha=0.9, lr_rules=[{'pattern': 'embed', 'lr_multiplier': 0}]))
    assert (s.name, s.max_steps, s.alpha, s.temperature) == ('heal', 5, 0.9, None)
    for d, msg in [(dict(name='x', steps=3), 'unknown key'), (dict(max_steps=3), 'name'), (dict(name='a/b'), 'folder name'),
                   (dict(name='x', max_steps=3, num_train_epochs=1), 'not both'), (dict(name='x', max_steps=0), 'max_steps'),
                   (dict(name='x', alpha=2), 'alpha'), (dict(name='x', temperature=-1), 'temperature')]:
        with pytest.raises(ValueError, match=msg): Stage.from_dict(d)

# ---------------------------------------------------------------- loss normalisation
@pytest.mark.parametrize('chunk', [None, 40])
def test_grad_accumulation_equals_big_batch(setup, tmp_path, chunk):
    "One step of batch 8 == 4 micro-batches of 2 (ragged label masks): same loss, ce, kd and gradients."
    out = {}
    for bs, ga in [(8, 1), (2, 4)]:
        g = Grads()
        tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                                 max_steps=1, loss_chunk_size=chunk, max_grad_norm=0), train_dataset=setup['k16'], callbacks=[g])
        tr.train()
        out[ga] = tr.state.log_history[0], g.steps[0]
    (l1, g1), (l4, g4) = out[1], out[4]
    for key in ('loss', 'ce_loss', 'kd_loss'): assert math.isclose(l1[key], l4[key], rel_tol=1e-5), (key, l1[key], l4[key])
    assert g1.keys() == g4.keys()
    for n in g1: torch.testing.assert_close(g1[n], g4[n], rtol=1e-4, atol=1e-7)

def test_logged_loss_is_the_blend_and_interval_mean(setup, tmp_path):
    "loss = (1-a) ce + a T^2 kd in every entry; with logging_steps=2 each entry is the mean of the per-step values."
    kw = dict(alpha=0.3, temperature=2.0, max_steps=4)
    h1 = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, **kw), train_dataset=setup['k16']); h1.train()
    h2 = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, logging_steps=2, **kw), train_dataset=setup['k16']); h2.train()
    e1 = [e for e in h1.state.log_history if 'loss' in e]
    e2 = [e for e in h2.state.log_history if 'loss' in e]
    assert [e['step'] for e in e2] == [2, 4]
    for e in e1 + e2: assert math.isclose(e['loss'], 0.7 * e['ce_loss'] + 0.3 * 4 * e['kd_loss'], rel_tol=1e-5)
    for j, e in enumerate(e2):
        for key in ('loss', 'ce_loss', 'kd_loss'): assert math.isclose(e[key], (e1[2*j][key] + e1[2*j+1][key]) / 2, rel_tol=1e-5)

def test_all_labels_masked_gives_zero_loss(setup, tmp_path):
    tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, loss_chunk_size=16), train_dataset=setup['k16'])
    b = distillation_collate([setup['k16'][i] for i in range(3)])
    b['labels'][:] = -100
    for chunk in (16, None):
        tr.args.loss_chunk_size = chunk
        tr.model.zero_grad()
        loss = tr.compute_loss(tr.model, dict(b), num_items_in_batch=None)
        loss.backward()
        assert loss.item() == 0 and not torch.isnan(loss)
        assert all(torch.isfinite(p.grad).all() and p.grad.abs().max() == 0 for p in tr.model.parameters() if p.grad is not None)

# ---------------------------------------------------------------- online teacher
def test_online_teacher_matches_kV_cache_and_dense_oracle(setup, tmp_path):
    "Online k=V targets give the dense loss exactly; a k=V cache gives the same loss within its quantisation."
    V, teacher = setup['V'], setup['teacher']
    on = DistillationTrainer(llama(V, 1, 1), targs(tmp_path, alpha=0.7), train_dataset=setup['ds'], teacher_model=teacher)
    ca = DistillationTrainer(llama(V, 1, 1), targs(tmp_path, alpha=0.7), train_dataset=setup['kV'])
    idx = list(range(6))
    bc = distillation_collate([setup['kV'][i] for i in idx])
    bo = distillation_collate([setup['ds'][i] for i in idx])
    assert torch.equal(bc['input_ids'], bo['input_ids']) and torch.equal(bc['labels'], bo['labels'])
    lo, out = on.compute_loss(on.model, dict(bo), return_outputs=True)
    lc = ca.compute_loss(ca.model, dict(bc))
    with torch.no_grad(): zt = teacher(input_ids=bo['input_ids'], attention_mask=bo['attention_mask']).logits
    ref = dense_distillation_loss(out.logits, zt, bo['labels'], alpha=0.7)
    assert math.isclose(lo.item(), ref.loss.item(), rel_tol=1e-5)
    assert math.isclose(lc.item(), lo.item(), rel_tol=2e-3)

def test_online_teacher_trains_like_the_cache(setup, tmp_path):
    "Two steps through Trainer.train: online teacher (k=V) and the k=V cache log the same losses."
    V = setup['V']
    on = DistillationTrainer(llama(V, 1, 1), targs(tmp_path), train_dataset=setup['ds'], teacher_model=setup['teacher']); on.train()
    ca = DistillationTrainer(llama(V, 1, 1), targs(tmp_path), train_dataset=setup['kV']); ca.train()
    for a, b in zip(on.state.log_history[:2], ca.state.log_history[:2]):
        for key in ('loss', 'ce_loss', 'kd_loss'): assert math.isclose(a[key], b[key], rel_tol=5e-3, abs_tol=1e-5), (key, a, b)

def test_online_topk_matches_a_topk_cache(setup, tmp_path):
    "teacher_topk=k matches a k-cache of the same teacher (within quantisation)."
    V = setup['V']
    on = DistillationTrainer(llama(V, 1, 1), targs(tmp_path, teacher_topk=16), train_dataset=setup['ds'], teacher_model=setup['teacher'])
    ca = DistillationTrainer(llama(V, 1, 1), targs(tmp_path), train_dataset=setup['k16'])
    b = distillation_collate([setup['k16'][i] for i in range(4)])
    t = on.online_targets({k: b[k] for k in ('input_ids', 'attention_mask')})
    assert t['teacher_ids'].shape[-1] == 16 and torch.equal(t['teacher_ids'].sort(-1).values, b['teacher_ids'].sort(-1).values)
    assert math.isclose(on.compute_loss(on.model, dict(b)).item(), ca.compute_loss(ca.model, dict(b)).item(), rel_tol=2e-3)

# ---------------------------------------------------------------- optimizer, logs, evaluation
def test_frozen_group_lr_logs_and_eval_metrics(setup, tmp_path):
    rules = [{'name': 'emb', 'pattern': 'embed_tokens', 'lr_multiplier': 0}, {'name': 'head', 'pattern': 'lm_head', 'lr_multiplier': 3.0}]
    tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, lr_rules=rules, eval_strategy='steps', eval_steps=2,
                             per_device_eval_batch_size=8), train_dataset=setup['k16'], eval_dataset=setup['kV'])
    emb0 = tr.model.model.embed_tokens.weight.detach().clone()
    tr.train()
    assert torch.equal(emb0, tr.model.model.embed_tokens.weight) and not tr.model.model.embed_tokens.weight.requires_grad
    logs = [e for e in tr.state.log_history if 'loss' in e]
    for e in logs:
        assert e['lr/emb'] == 0 and math.isclose(e['lr/head'], 3 * e['lr/default']) and e['lr/default'] == e['learning_rate']
    assert logs[0]['learning_rate'] == 1e-3
    ev = [e for e in tr.state.log_history if 'eval_loss' in e][-1]
    ref = evaluate_distillation(tr.model, setup['teacher'], setup['ds'], batch_size=8)
    assert math.isclose(ev['eval_ce_loss'], ref['ce'], rel_tol=1e-5)
    assert math.isclose(ev['eval_kd_loss'], ref['kl'], rel_tol=2e-2, abs_tol=1e-4)  # k=V cache vs exact dense KL
    assert math.isclose(ev['eval_top1_agreement'], ref['top1_agreement'], abs_tol=0.02)

def test_lr_logged_only_for_rules_that_hold_parameters(setup, tmp_path):
    "A rule shadowed by an earlier one and an empty default group are not logged; a frozen rule that holds tensors logs 0."
    rules = [{'name': 'emb', 'pattern': 'embed_tokens', 'lr_multiplier': 0}, {'name': 'shadowed', 'pattern': 'embed', 'lr_multiplier': 2},
             {'name': 'rest', 'pattern': '.', 'lr_multiplier': 1}]
    with pytest.warns(UserWarning, match="'shadowed'.*earlier rule"):
        tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, lr_rules=rules), train_dataset=setup['k16'])
        tr.train()
    logs = [e for e in tr.state.log_history if 'loss' in e]
    assert all(sorted(k for k in e if k.startswith('lr/')) == ['lr/emb', 'lr/rest'] for e in logs), logs[0]
    assert all(e['lr/emb'] == 0 and e['lr/rest'] == e['learning_rate'] for e in logs)

def test_evaluate_distillation_teacher_vs_itself(setup):
    r = evaluate_distillation(setup['teacher'], setup['teacher'], setup['ds'], batch_size=8)
    assert r['kl'] == pytest.approx(0, abs=1e-6) and r['top1_agreement'] == 1.0 and r['ce'] > 0
    assert r['tokens'] == sum(int((torch.tensor(l[1:]) != -100).sum()) for l in setup['ds']['labels'])

def test_padded_vocab_student_gives_the_same_loss(setup, tmp_path):
    "A student with 64 extra output rows gives the loss of the same student without them (extra logits excluded)."
    V = setup['V']
    small = llama(V, 1, 1)
    big = llama(V + 64, 1, 2)
    with torch.no_grad():
        for n, p in big.named_parameters():
            q = dict(small.named_parameters())[n]
            p.copy_(torch.cat([q, torch.randn(p.shape[0] - q.shape[0], *q.shape[1:]) * 5]) if p.shape != q.shape else q)
    b = distillation_collate([setup['k16'][i] for i in range(4)])
    for chunk in (None, 32):
        ls = [DistillationTrainer(m, targs(tmp_path, loss_chunk_size=chunk), train_dataset=setup['k16'], processing_class=setup['tok'])
              .compute_loss(m, dict(b)).item() for m in (small, big)]
        assert math.isclose(ls[0], ls[1], rel_tol=1e-5), ls

def test_saved_student_reloads(setup, tmp_path):
    tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path), train_dataset=setup['k16']); tr.train()
    tr.save_model(str(tmp_path / 'final'))
    m = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'final'))
    x = torch.tensor([setup['ds'][0]['input_ids']])
    torch.testing.assert_close(m(input_ids=x).logits, tr.model(input_ids=x).logits)

# ---------------------------------------------------------------- stages
def test_run_stages_in_process(setup, tmp_path):
    "Two stages: folders with final checkpoints, a continuing global step, stage tags, the freeze lifted, a re-run is a no-op."
    a = targs(tmp_path, save_strategy='steps', save_steps=100, max_steps=-1)
    stages = [dict(name='head', max_steps=2, lr_rules=[{'name': 'body', 'pattern': r'model\.', 'lr_multiplier': 0}]),
              Stage('all', max_steps=3, learning_rate=5e-4, alpha=0.9)]
    tr = DistillationTrainer(llama(setup['V'], 1, 1), a, train_dataset=setup['k16'])
    body0 = tr.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    h = run_stages(tr, stages)
    logs = [e for e in h if 'loss' in e]
    assert [e['step'] for e in logs] == [1, 2, 3, 4, 5] and [e['stage'] for e in logs] == ['head'] * 2 + ['all'] * 3
    assert [e['lr/body'] for e in logs[:2]] == [0, 0] and logs[2]['learning_rate'] == 5e-4
    assert all(math.isclose(e['loss'], 0.1 * e['ce_loss'] + 0.9 * e['kd_loss'], rel_tol=1e-5) for e in logs[2:])
    assert not torch.equal(body0, tr.model.model.layers[0].mlp.up_proj.weight)
    assert (tmp_path / 'out' / 'head' / 'checkpoint-2').is_dir() and (tmp_path / 'out' / 'all' / 'checkpoint-5').is_dir()
    w = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr2 = DistillationTrainer(llama(setup['V'], 1, 7), targs(tmp_path, save_strategy='steps', save_steps=100, max_steps=-1), train_dataset=setup['k16'])
    h2 = run_stages(tr2, stages)                         # everything is done: loads the final state and weights
    assert [e['step'] for e in h2 if 'loss' in e] == [1, 2, 3, 4, 5] and tr2.state.global_step == 5
    assert all(torch.equal(w[k], v) for k, v in tr2.model.state_dict().items())
    with pytest.raises(ValueError, match='distinct'): run_stages(tr2, [dict(name='a'), dict(name='a')])
    with pytest.raises(ValueError, match=r'another plan: stages'): run_stages(tr2, [dict(name='head', max_steps=1)])

# ---------------------------------------------------------------- bad input
def test_cache_from_another_tokenizer_is_refused(setup, tmp_path):
    other = train_demo_tokenizer(demo_corpus(200, seed=5), vocab_size=300)
    with pytest.raises(CacheError, match='tokenizer fingerprint'):
        DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path), train_dataset=setup['k16'], processing_class=other)

def test_narrow_student_and_missing_teacher_are_refused(setup, tmp_path):
    with pytest.raises(CacheError, match='narrower'):
        DistillationTrainer(llama(setup['V'] - 10, 1, 1), targs(tmp_path), train_dataset=setup['k16'])
    with pytest.raises(ValueError, match='no teacher: train_dataset'):
        DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path), train_dataset=setup['ds'])
    with pytest.raises(ValueError, match='no teacher: eval_dataset'):
        DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path), train_dataset=setup['k16'], eval_dataset={'a': setup['k16'], 'b': setup['ds']})
    DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path), train_dataset=setup['k16'], eval_dataset=setup['ds'], teacher_model=setup['teacher'])
    with pytest.raises(TypeError, match='DistillationTrainingArguments'):
        from transformers import TrainingArguments
        DistillationTrainer(llama(setup['V'], 1, 1), TrainingArguments(output_dir=str(tmp_path), use_cpu=True), train_dataset=setup['k16'])

def test_temperature_missing_from_cache_is_refused(setup, tmp_path):
    DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, temperature=2.0), train_dataset=setup['k16'])  # stored: fine
    with pytest.raises(CacheError, match='temperature=3'):
        DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, temperature=3.0), train_dataset=setup['k16'])
    tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path), train_dataset=setup['k16'])
    with pytest.raises(CacheError, match='temperature=3'): tr.update_stage(dict(name='hot', max_steps=1, temperature=3.0))

def test_epoch_stage_and_manual_update_stage(setup, tmp_path):
    "A stage given in epochs runs ceil(epochs x steps per epoch) steps; update_stage leaves the caller's arguments alone."
    a = targs(tmp_path, max_steps=-1, per_device_train_batch_size=8)
    tr = DistillationTrainer(llama(setup['V'], 1, 1), a, train_dataset=setup['k16'])
    per_epoch = math.ceil(len(setup['k16']) / 8)
    assert tr.stage_steps(Stage('e', num_train_epochs=0.5)) == math.ceil(0.5 * per_epoch)
    h = run_stages(tr, [Stage('e', num_train_epochs=0.5), Stage('s', max_steps=1, learning_rate=2e-5)])
    assert [e['step'] for e in h if 'loss' in e] == list(range(1, math.ceil(0.5 * per_epoch) + 2))
    assert h[-2]['stage'] == 's' and h[-2]['learning_rate'] == 2e-5
    assert a.output_dir == str(tmp_path / 'out') and a.max_steps == -1 and a.learning_rate == 1e-3
    tr.update_stage(dict(name='manual', max_steps=2, alpha=1.0))   # then a plain train(): two steps of pure KD
    tr.train()
    last = [e for e in tr.state.log_history if 'loss' in e]
    assert [e['step'] for e in last] == [1, 2] and all(e['loss'] == pytest.approx(e['kd_loss'], rel=1e-5) for e in last)

def test_stage_last_step_is_logged(setup, tmp_path):
    "With logging_steps=2, stages of 3 and 2 steps log steps 2, 3 (end of stage 1), 4, 5; each entry averages its own interval."
    tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, logging_steps=2, max_steps=-1, alpha=0.4), train_dataset=setup['k16'])
    h = run_stages(tr, [Stage('a', max_steps=3), Stage('b', max_steps=2)])
    logs = [e for e in h if 'loss' in e]
    assert [(e['step'], e['stage']) for e in logs] == [(2, 'a'), (3, 'a'), (4, 'b'), (5, 'b')]
    assert all(math.isclose(e['loss'], 0.6 * e['ce_loss'] + 0.4 * e['kd_loss'], rel_tol=1e-5) for e in logs)

def test_sampled_cache_trains_and_evaluates(setup, tmp_path):
    "A sample-mode cache (ids + counts) goes through the same trainer: finite losses, top-1 from the most-sampled id."
    p = TeacherLogitsGenerator(setup['teacher'], setup['tok'], mode='sample', n_samples=8, progress=False).generate(setup['ds'], tmp_path / 's.h5')
    cache = CachedLogitsDataset(p)
    tr = DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, loss_chunk_size=32), train_dataset=cache, eval_dataset=cache)
    tr.train()
    ev = tr.evaluate()
    assert all(math.isfinite(e['loss']) for e in tr.state.log_history if 'loss' in e) and 0 <= ev['eval_top1_agreement'] <= 1
    with pytest.raises(CacheError, match='capture temperature'):
        DistillationTrainer(llama(setup['V'], 1, 1), targs(tmp_path, temperature=2.0), train_dataset=cache)
