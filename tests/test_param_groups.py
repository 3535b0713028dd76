"""ParameterGroupManager on real architectures built from configs (Llama, Qwen2, GPT-2, a peft LoRA model):
groups, freezes, the weight-decay split, scheduler ratios, and bad input."""
import pytest, torch
from torch import nn
from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
from kdkit.models import tiny_model
from kdkit.param_groups import ParameterGroupManager, decay_parameter_names

torch.set_num_threads(1)
V = 128

def llama(layers=2, tied=True): return tiny_model(V, layers, arch='llama', tie=tied)
def qwen2(layers=2, tied=False): return tiny_model(V, layers, arch='qwen2', tie=tied)
def gpt2(): return tiny_model(V, 2, arch='gpt2', tie=True)
def lora(model=None):
    peft = pytest.importorskip('peft')
    return peft.get_peft_model(model or qwen2(), peft.LoraConfig(r=4, target_modules=['q_proj', 'v_proj']))

MODELS = {'llama': llama, 'qwen2': qwen2, 'gpt2': gpt2, 'lora': lora}
RULES = {  # a realistic set per architecture: seam layer fast, embeddings frozen, rest slow
    'llama': [{'name': 'emb', 'pattern': r'embed_tokens', 'lr_multiplier': 0}, {'name': 'seam', 'pattern': r'layers\.1\.', 'lr_multiplier': 1}],
    'qwen2': [{'name': 'emb', 'pattern': r'embed_tokens', 'lr_multiplier': 0}, {'name': 'seam', 'pattern': r'layers\.1\.', 'lr_multiplier': 1}],
    'gpt2': [{'name': 'emb', 'pattern': r'\.w[tp]e\.', 'lr_multiplier': 0}, {'name': 'seam', 'pattern': r'\.h\.1\.', 'lr_multiplier': 1}],
    'lora': [{'name': 'lora_A', 'pattern': r'lora_A', 'lr_multiplier': 2.0}, {'name': 'seam', 'pattern': r'layers\.1\.', 'lr_multiplier': 1}],
}

def trainable(model): return {n for n, p in model.named_parameters() if p.requires_grad}

@pytest.mark.parametrize('arch', MODELS)
def test_decay_names_agree_with_trainer(arch):
    m = MODELS[arch]()
    assert sorted(decay_parameter_names(m)) == sorted(Trainer.get_decay_parameter_names(None, m))

@pytest.mark.parametrize('arch', MODELS)
def test_groups_hold_every_trainable_tensor_once(arch):
    m = MODELS[arch]()
    pgm = ParameterGroupManager(RULES[arch], default_lr_multiplier=0.1, default_name='rest')
    groups = pgm.param_groups(m, learning_rate=1e-3, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids))                                           # exactly one group each
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}     # every trainable one
    assert all(p.requires_grad for g in groups for p in g['params'])
    by_id = {id(p): n for n, p in m.named_parameters()}
    for g in groups:
        assert g['lr'] == pytest.approx(1e-3 * g['lr_multiplier'])
        assert g['lr_multiplier'] == {'emb': 0, 'seam': 1.0, 'lora_A': 2.0, 'rest': 0.1}[g['name']]
        for p in g['params']:
            n = by_id[id(p)].lower()
            if g['weight_decay'] > 0: assert 'bias' not in n and 'norm' not in n and 'ln_' not in n and 'embed' not in n, n
    nodecay = {by_id[id(p)] for g in groups if g['weight_decay'] == 0 for p in g['params']}
    decay = {by_id[id(p)] for g in groups if g['weight_decay'] > 0 for p in g['params']}
    assert decay and (nodecay or arch == 'lora')  # LoRA trains only A and B matrices, all decayed
    # agrees with the Trainer on everything but embeddings (kdkit's default: no decay for embeddings)
    trainer_decay = set(Trainer.get_decay_parameter_names(None, m))
    emb = {n for n, p in m.named_parameters() if any(p is q for mod in m.modules() if isinstance(mod, nn.Embedding) for q in mod.parameters())}
    assert decay == (trainer_decay - emb) & (decay | nodecay)
    if arch != 'lora':
        assert any('ln' in n or 'norm' in n for n in nodecay)
    if arch == 'gpt2': assert any(n.endswith('.bias') for n in nodecay)

def test_embedding_and_tied_lm_head_not_decayed():
    m = llama(tied=True)  # lm_head.weight is embed_tokens.weight
    pgm = ParameterGroupManager([], default_lr_multiplier=1.0)
    groups = pgm.param_groups(m, 1e-3, weight_decay=0.1)
    emb = m.model.embed_tokens.weight
    where = [g['weight_decay'] for g in groups for p in g['params'] if p is emb]
    assert where == [0.0]
    assert sum(len(g['params']) for g in groups) == len(list(m.parameters()))  # tied tensor counted once
    # the Trainer's behaviour when asked for it
    groups = ParameterGroupManager([], decay_embeddings=True).param_groups(m, 1e-3, weight_decay=0.1)
    assert [g['weight_decay'] for g in groups for p in g['params'] if p is emb] == [0.1]
    # untied lm_head (Qwen2 untied): a Linear, decayed like any weight; its embedding is not
    q = qwen2(tied=False)
    groups = ParameterGroupManager([]).param_groups(q, 1e-3, weight_decay=0.1)
    wd = {id(p): g['weight_decay'] for g in groups for p in g['params']}
    assert wd[id(q.lm_head.weight)] == 0.1 and wd[id(q.model.embed_tokens.weight)] == 0.0
    # GPT-2: both token and position embeddings
    g2 = gpt2()
    wd = {id(p): g['weight_decay'] for g in ParameterGroupManager([]).param_groups(g2, 1e-3, 0.1) for p in g['params']}
    assert wd[id(g2.transformer.wte.weight)] == 0.0 and wd[id(g2.transformer.wpe.weight)] == 0.0

def test_rule_weight_decay_and_decay_names_override():
    m = llama()
    pgm = ParameterGroupManager([{'name': 'seam', 'pattern': r'layers\.1\.', 'lr_multiplier': 1, 'weight_decay': 0.5}])
    groups = pgm.param_groups(m, 1e-3, weight_decay=0.1)
    assert {(g['name'], g['weight_decay']) for g in groups} == {('seam', 0.5), ('seam', 0.0), ('default', 0.1), ('default', 0.0)}
    groups = pgm.param_groups(m, 1e-3, weight_decay=0.1, decay_parameter_names=[])  # e.g. a Trainer that decays nothing
    assert all(g['weight_decay'] == 0.0 for g in groups)

def test_tied_alias_matches_and_assignments():
    m = llama(tied=True)
    pgm = ParameterGroupManager([{'name': 'head', 'pattern': r'^lm_head', 'lr_multiplier': 0}])
    pgm.apply(m)
    assert not m.model.embed_tokens.weight.requires_grad  # the rule names the alias; the tensor is shared
    a = pgm.assignments(m)
    assert a['lm_head.weight'] == a['model.embed_tokens.weight'] == 'head'
    assert a['model.layers.0.mlp.up_proj.weight'] == 'default'

def test_first_match_wins_and_shadowed_rule_warns():
    m = llama()
    rules = [{'name': 'a', 'pattern': r'layers\.', 'lr_multiplier': 0.5}, {'name': 'b', 'pattern': r'layers\.0\.', 'lr_multiplier': 2}]
    with pytest.warns(UserWarning, match="'b'.*earlier rule"):
        a = ParameterGroupManager(rules).assignments(m)
    assert a['model.layers.0.self_attn.q_proj.weight'] == 'a'

def test_freeze_then_unfreeze_only_what_kdkit_froze():
    m = llama()
    m.model.norm.weight.requires_grad_(False)  # someone else froze it
    stage1 = ParameterGroupManager([{'name': 'seam', 'pattern': r'layers\.1\.', 'lr_multiplier': 1}], default_lr_multiplier=0)
    stage1.apply(m)
    assert trainable(m) == {n for n, _ in m.named_parameters() if 'layers.1.' in n}
    stage2 = ParameterGroupManager([], default_lr_multiplier=1)
    groups = stage2.param_groups(m, 1e-3)
    assert trainable(m) == {n for n, _ in m.named_parameters()} - {'model.norm.weight'}
    assert sum(len(g['params']) for g in groups) == len(trainable(m))
    # applying twice changes nothing
    stage2.apply(m); assert trainable(m) == {n for n, _ in m.named_parameters()} - {'model.norm.weight'}

def test_peft_base_stays_frozen():
    m = lora()
    lora_names = {n for n, _ in m.named_parameters() if 'lora_' in n}
    assert trainable(m) == lora_names
    # stage 1 freezes lora_A, stage 2 un-freezes it; the base never moves
    ParameterGroupManager([{'name': 'A', 'pattern': 'lora_A', 'lr_multiplier': 0}]).apply(m)
    assert trainable(m) == {n for n in lora_names if 'lora_B' in n}
    pgm = ParameterGroupManager([{'name': 'fast', 'pattern': 'lora_B', 'lr_multiplier': 10}])
    groups = pgm.param_groups(m, 1e-4)
    assert trainable(m) == lora_names
    assert {g['name']: g['lr'] for g in groups} == {'fast': pytest.approx(1e-3), 'default': pytest.approx(1e-4)}
    s = pgm.summary(m)
    assert s.rows[-1]['frozen'].endswith('(before kdkit)')
    # everything a PEFT model can train, frozen: the error names the rule and the outside freeze
    with pytest.raises(ValueError, match=r"rule 'lora'.*before kdkit"):
        ParameterGroupManager([{'name': 'lora', 'pattern': 'lora_', 'lr_multiplier': 0}]).apply(m)
    assert trainable(m) == lora_names  # untouched by the failed apply

@pytest.mark.parametrize('make_sched', [
    lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=3, num_training_steps=12),
    lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=3, num_training_steps=12)], ids=['cosine', 'linear'])
@pytest.mark.parametrize('optim', ['adamw_torch', 'sgd'])
def test_scheduler_keeps_ratios(tmp_path, make_sched, optim):
    m = llama()
    pgm = ParameterGroupManager([{'name': 'emb', 'pattern': 'embed', 'lr_multiplier': 0},
                                 {'name': 'fast', 'pattern': r'layers\.1\.', 'lr_multiplier': 3.0}], default_lr_multiplier=0.25)
    args = TrainingArguments(output_dir=str(tmp_path), optim=optim, learning_rate=2e-3, weight_decay=0.01, use_cpu=True, report_to=[])
    cls, kw = Trainer.get_optimizer_cls_and_kwargs(args, m)  # the Trainer's optimizer choice
    opt = cls(pgm.param_groups(m, args.learning_rate, args.weight_decay), **kw)
    sched = make_sched(opt)
    x = torch.randint(0, V, (2, 8))
    for step in range(12):
        lrs = pgm.learning_rates(opt)
        assert lrs['emb'] == 0.0
        factor = sched.lr_lambdas[0](step)
        assert lrs['fast'] == pytest.approx(3.0 * 2e-3 * factor, abs=1e-15)
        assert lrs['default'] == pytest.approx(0.25 * 2e-3 * factor, abs=1e-15)
        for g in opt.param_groups: assert g['lr'] == pytest.approx(g['lr_multiplier'] * 2e-3 * factor, abs=1e-15)
        m(input_ids=x, labels=x).loss.backward()
        opt.step(); opt.zero_grad(); sched.step()
    assert any(sched.lr_lambdas[0](s) < 1 for s in range(1, 12))  # the schedule did move

def test_frozen_group_and_ratios_hold_in_a_trainer_run(tmp_path):
    """A short Trainer run with the groups: the frozen group does not move, the ratio holds at every logged step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    m = llama()
    pgm = ParameterGroupManager([{'name': 'emb', 'pattern': 'embed', 'lr_multiplier': 0},
                                 {'name': 'fast', 'pattern': r'layers\.1\.', 'lr_multiplier': 4.0}], default_lr_multiplier=0.5)
    torch.manual_seed(0)
    ids = torch.randint(0, V, (16, 16)).tolist()
    ds = Dataset.from_dict({'input_ids': ids, 'labels': ids})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-3,
                             lr_scheduler_type='cosine', warmup_steps=2, logging_steps=1, use_cpu=True, report_to=[],
                             save_strategy='no', disable_tqdm=True)
    opt = torch.optim.AdamW(pgm.param_groups(m, args.learning_rate, args.weight_decay))
    seen = []
    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw): seen.append(pgm.learning_rates(optimizer))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    Trainer(model=m, args=args, train_dataset=ds, optimizers=(opt, None), callbacks=[Spy()]).train()
    assert len(seen) == 5
    for lrs in seen:
        assert lrs['emb'] == 0
        assert lrs['fast'] == pytest.approx(8 * lrs['default'], rel=1e-12)
    assert torch.equal(before['model.embed_tokens.weight'], m.model.embed_tokens.weight)
    assert not torch.equal(before['model.layers.1.mlp.up_proj.weight'], m.model.layers[1].mlp.up_proj.weight)

def test_bad_rules_are_errors_naming_the_rule():
    m = llama()
    with pytest.raises(ValueError, match=r"lr rule 0 \('x'\): invalid regex"):
        ParameterGroupManager([{'name': 'x', 'pattern': r'layers.(', 'lr_multiplier': 1}])
    with pytest.raises(ValueError, match=r"lr rule 1 \('neg'\).*lr_multiplier"):
        ParameterGroupManager([{'pattern': 'a', 'lr_multiplier': 1}, {'name': 'neg', 'pattern': 'b', 'lr_multiplier': -0.1}])
    for bad in ['fast', None, True, [1]]:
        with pytest.raises(TypeError, match='lr_multiplier'):
            ParameterGroupManager([{'pattern': 'a', 'lr_multiplier': bad}])
    with pytest.raises(ValueError, match="missing 'lr_multiplier'"):
        ParameterGroupManager([{'pattern': 'a'}])
    with pytest.raises(TypeError, match='default_lr_multiplier'):
        ParameterGroupManager([], default_lr_multiplier='1')
    with pytest.raises(ValueError, match=r"lr rule 0 \('typo'\).*closest names: \['model\.layers\.") as e:
        ParameterGroupManager([{'name': 'typo', 'pattern': r'model\.layer\.0\.self_atn', 'lr_multiplier': 1}]).apply(m)
    assert 'strict=False' in str(e.value)
    with pytest.warns(UserWarning, match="matches no parameter"):
        ParameterGroupManager([{'name': 'deep', 'pattern': r'layers\.9\.', 'lr_multiplier': 1}], strict=False).apply(m)
    with pytest.raises(ValueError, match=r"no trainable parameter left: rule 'emb'.*rule 'default'"):
        ParameterGroupManager([{'name': 'emb', 'pattern': 'embed', 'lr_multiplier': 0}], default_lr_multiplier=0).apply(m)
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="no trainable parameter"):
        ParameterGroupManager([], default_lr_multiplier=0).param_groups(m, 1e-3)
    with pytest.raises(TypeError, match='learning_rate'):
        ParameterGroupManager([]).param_groups(m, '1e-3')

def test_summary_text_and_html():
    m = llama(layers=4)
    pgm = ParameterGroupManager([{'name': 'embeddings', 'pattern': 'embed_tokens', 'lr_multiplier': 0},
                                 {'name': 'seam', 'pattern': r'layers\.(1|2)\.', 'lr_multiplier': 1.0}],
                                default_lr_multiplier=0.1, default_name='rest')
    s = pgm.summary(m, learning_rate=1e-4, weight_decay=0.01)
    assert [r['rule'] for r in s.rows] == ['embeddings', 'seam', 'rest']
    assert sum(r['parameters'] for r in s.rows) == s.total['parameters'] == sum(p.numel() for p in m.parameters())
    assert sum(r['share'] for r in s.rows) == pytest.approx(1.0)
    assert s.total['trainable'] == s.total['parameters'] - m.model.embed_tokens.weight.numel()
    assert [r['tensors'] for r in s.rows] == [1, 18, 19]
    text = str(s)
    assert 'seam' in text and 'yes (lr_multiplier 0)' in text and '<' not in text
    h = s._repr_html_()
    assert h.startswith('<table>') and h.count('<tr>') == 5 and 'layers\\.(1|2)\\.' in h
    assert all(p.requires_grad for p in m.parameters())  # summary does not change the model

def test_rules_without_tensors_are_left_out_of_learning_rates():
    "A shadowed rule and an empty default group hold no tensor: learning_rates(opt, model) leaves them out; a frozen rule stays at 0."
    m = llama()
    rules = [{'name': 'emb', 'pattern': 'embed', 'lr_multiplier': 0}, {'name': 'shadowed', 'pattern': 'embed_tokens', 'lr_multiplier': 2},
             {'name': 'all', 'pattern': '.', 'lr_multiplier': 1}]
    with pytest.warns(UserWarning, match="'shadowed'"):
        pgm = ParameterGroupManager(rules)
        opt = torch.optim.SGD(pgm.param_groups(m, 1e-3))
        assert pgm.held_rules(m) == ['emb', 'all']
        assert pgm.learning_rates(opt, m) == {'emb': 0.0, 'all': 1e-3}
    assert pgm.learning_rates(opt) == {'emb': 0.0, 'shadowed': 0.0, 'all': 1e-3, 'default': 0.0}  # without the model: every rule
