"""Safety checks of staged runs: stage values from YAML, checks before stage 1 trains, the run folder's plan,
non-finite targets, eval with no scored tokens, sample caches with kd_tail='renorm', a padded student without a tokenizer."""
import math
import pytest, torch
from kdkit.cache import CachedLogitsDataset, TeacherLogitsGenerator
from kdkit.trainer import DistillationTrainer, DistillationTrainingArguments, Stage, run_stages
from tiny import ToyTokenizer, tiny_llama, toy_blocks
from datasets import Dataset

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    ds = Dataset.from_dict({k: v.tolist() for k, v in toy_blocks(16).items()})
    p = TeacherLogitsGenerator(tiny_llama(), ToyTokenizer(), k=8, progress=False).generate(ds, tmp_path_factory.mktemp('c') / 'c.h5')
    return CachedLogitsDataset(p)

def targs(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / 'run'), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], use_cpu=True,
                disable_tqdm=True, logging_steps=1, save_steps=100, seed=0)
    return DistillationTrainingArguments(**{**base, **kw})

def test_stage_numeric_strings_read_or_refused_naming_the_field():
    s = Stage.from_dict(dict(name='a', max_steps='20', learning_rate='1e-3'))
    assert (s.max_steps, s.learning_rate) == (20, 1e-3)
    with pytest.raises(ValueError, match="Stage 'a': learning_rate must be a number"): Stage('a', learning_rate='fast')

@pytest.mark.parametrize('bad,msg', [(dict(lr_rules=[{'pattern': r'layers\.7\.', 'lr_multiplier': 1}]), 'lr rule 0'),
                                     (dict(lr_scheduler_type='cosin'), 'lr_scheduler_type'), (dict(learning_rate=math.inf), 'learning_rate'),
                                     (dict(weight_decay=-1), 'weight_decay'), (dict(warmup_steps=-5), 'warmup_steps'),
                                     (dict(temperature=1e-30), 'temperature'), (dict(hidden_weight=-1), 'hidden_weight'),
                                     (dict(hidden_layers=[[0]]), 'hidden_layers'), (dict(hidden_loss='l1'), 'hidden_loss'),
                                     (dict(hidden_projection='yes'), 'hidden_projection'),
                                     (dict(hidden_weight=1.0, hidden_layers=[[0, 1]]), 'no teacher hidden states')])
def test_bad_stage_2_is_refused_before_stage_1_trains(cache, tmp_path, bad, msg):
    tr = DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache)
    with pytest.raises((ValueError, TypeError), match=msg):
        run_stages(tr, [dict(name='one', max_steps=1), dict(name='two', max_steps=1, **bad)])
    assert tr.state.global_step == 0 and not (tmp_path / 'run' / 'one').exists()

def test_rerun_with_another_plan_is_refused_and_an_identical_one_resumes(cache, tmp_path, capsys):
    plan = [dict(name='one', max_steps=1), dict(name='two', max_steps=2)]
    run_stages(DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache), plan)
    assert (tmp_path / 'run' / 'run_plan.json').is_file()
    changed = [plan[0], dict(plan[1], learning_rate=5e-4, alpha=0.9)]
    with pytest.raises(ValueError, match=r'stages\[1\]\.learning_rate: 0\.001 -> 0\.0005.*stages\[1\]\.alpha'):
        run_stages(DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache), changed)
    with pytest.raises(ValueError, match=r'stages\[0\]\.steps: 1 -> 2'):
        run_stages(DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache), [dict(plan[0], max_steps=2), plan[1]])
    h = run_stages(DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache), changed, overwrite=True)
    assert [e['stage'] for e in h if 'loss' in e] == ['one', 'two', 'two']
    import shutil; shutil.rmtree(tmp_path / 'run' / 'two')
    capsys.readouterr()
    run_stages(DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache), changed)
    assert 'resuming stage 2 at step 0 of 2' in capsys.readouterr().out

def test_nan_target_stops_naming_step_and_cache_row(cache, tmp_path):
    read = cache.read
    def poisoned(idx):
        b = read(idx)
        for j, i in enumerate(idx):
            if int(i) == 7: b['teacher_lse'][j, 3] = float('nan')
        return b
    cache.read = poisoned
    try:
        tr = DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path, max_steps=4, save_strategy='no'), train_dataset=cache)
        with pytest.raises(FloatingPointError, match=r'step \d+: non-finite teacher targets .* cache rows \[7\]'): tr.train()
        assert all(torch.isfinite(p).all() for p in tr.model.parameters())
        tr = DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path, max_steps=4, save_strategy='no', skip_nonfinite_batches=True), train_dataset=cache)
        with pytest.warns(UserWarning, match='1 skipped so far'): tr.train()
        assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    finally: del cache.read

def test_eval_without_scored_tokens_is_nan_with_a_warning(cache, tmp_path):
    tr = DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=cache)
    masked = [dict(cache[i], labels=torch.full_like(cache[i]['labels'], -100)) for i in range(4)]
    with pytest.warns(UserWarning, match='no scored tokens'): ev = tr.evaluate(eval_dataset=masked)
    assert math.isnan(ev['eval_ce_loss']) and math.isnan(ev['eval_top1_agreement'])

def test_wider_student_without_tokenizer_warns_with_both_sizes(cache, tmp_path):
    with pytest.warns(UserWarning, match='300 tokens.*400 rows'):
        DistillationTrainer(tiny_llama(400, layers=1), targs(tmp_path), train_dataset=cache)

def test_sample_cache_with_renorm_tail_is_refused(tmp_path):
    ds = Dataset.from_dict({k: v.tolist() for k, v in toy_blocks(4).items()})
    p = TeacherLogitsGenerator(tiny_llama(), ToyTokenizer(), mode='sample', n_samples=4, progress=False).generate(ds, tmp_path / 's.h5')
    with pytest.raises(ValueError, match='sampled targets'):
        DistillationTrainer(tiny_llama(layers=1), targs(tmp_path, kd_tail='renorm'), train_dataset=CachedLogitsDataset(p))

def test_hidden_term_switched_on_by_a_stage(tmp_path):
    "Stage 1 KD only, stage 2 with hidden_weight (online teacher, explicit pairs): hidden_loss logged in stage 2 only; the plan records it."
    import json
    blocks = Dataset.from_dict({k: v.tolist() for k, v in toy_blocks(16).items()})
    teacher = tiny_llama(seed=0)
    tr = DistillationTrainer(tiny_llama(layers=1, seed=1), targs(tmp_path), train_dataset=blocks, teacher_model=teacher)
    hist = run_stages(tr, [dict(name='kd', max_steps=1), dict(name='hs', max_steps=2, hidden_weight=0.5, hidden_layers=[[0, 0], [-1, -1]], hidden_loss='mse')])
    logs = [e for e in hist if 'loss' in e]
    assert [('hidden_loss' in e, e['stage']) for e in logs] == [(False, 'kd'), (True, 'hs'), (True, 'hs')]
    assert all(e['hidden_loss'] > 0 for e in logs[1:])
    plan = json.loads((tmp_path / 'run' / 'run_plan.json').read_text())
    assert plan['stages'][1]['hidden_layers'] == [[0, 0], [-1, -1]] and plan['stages'][0]['hidden_weight'] == 0.0
