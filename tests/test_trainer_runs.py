"""Whole two-stage runs in subprocesses (tests/trainer_worker.py): torchrun DDP on CPU equals one process, and a run
SIGKILLed inside stage 2 resumes to the same end as an uninterrupted one."""
import json, os, signal, subprocess, sys
from pathlib import Path
import numpy as np
import pytest, torch
from kdkit.cache import TeacherLogitsGenerator
from kdkit.data import demo_corpus, demo_tokenizer, prepare_dataset
from kdkit.models import tiny_model
from tiny import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / 'tests' / 'trainer_worker.py')
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "A k=16 cache of a tiny teacher over blocks whose label masks differ (so per-rank token counts differ)."
    tok = demo_tokenizer(); V = len(tok)
    teacher = tiny_llama(V, 2, seed=0)
    ds = prepare_dataset(demo_corpus(40, seed=0), tok, seq_len=32)
    cuts = np.random.default_rng(0).integers(0, 28, len(ds))
    ds = ds.map(lambda r, i: {'labels': [-100] * int(cuts[i]) + list(r['labels'])[int(cuts[i]):]}, with_indices=True)
    return TeacherLogitsGenerator(teacher, tok, k=16, progress=False).generate(ds, tmp_path_factory.mktemp('c') / 'c.h5')

def run(args, torchrun=False, check=True):
    cmd = ([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port', str(29500 + os.getpid() % 1000)]
           if torchrun else [sys.executable]) + [WORKER] + [str(a) for a in args]
    r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0: raise AssertionError(f'{cmd} exited {r.returncode}:\n{r.stderr[-4000:]}')
    return r

def results(out):
    h = json.loads((Path(out) / 'history.json').read_text())
    return [e for e in h if 'loss' in e], torch.load(Path(out) / 'weights-rank0.pt')

def assert_same(a, b, rtol=1e-5, wtol=1e-4, keys=('loss', 'ce_loss', 'kd_loss')):
    (la, wa), (lb, wb) = a, b
    assert [(e['step'], e['stage']) for e in la] == [(e['step'], e['stage']) for e in lb]
    for x, y in zip(la, lb):
        for k in keys: assert x[k] == pytest.approx(y[k], rel=rtol), (k, x, y)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < wtol

COMMON = ['--chunk', 24, '--steps', '3,4', '--save_steps', 2, '--accum', 2]  # fused loss, 2 micro-batches per step

@pytest.fixture(scope='module')
def full(cache, tmp_path_factory):
    "The uninterrupted one-process run (batch 4 x 2 accumulated): the reference of every test here."
    out = tmp_path_factory.mktemp('full')
    run(['--cache', cache, '--out', out, '--batch', 4] + COMMON)
    return results(out)

def test_ddp_two_processes_equal_one(cache, full, tmp_path):
    "torchrun 2 ranks x batch 2 x 2 accumulated == 1 x batch 4 x 2, fused loss, a group unfrozen in stage 2; ranks agree."
    run(['--cache', cache, '--out', tmp_path / 'ddp', '--batch', 2] + COMMON, torchrun=True)
    ddp = results(tmp_path / 'ddp')
    assert [e['stage'] for e in full[0]] == ['freeze'] * 3 + ['all'] * 4
    assert full[0][0]['lr/layer0'] == 0 and full[0][3]['lr/emb'] > 0
    assert_same(full, ddp, rtol=1e-4)  # fp32 sums in another order: kd (~3e-3) differs by ~1e-5 relative
    w1 = torch.load(tmp_path / 'ddp' / 'weights-rank1.pt')
    assert all(torch.equal(w1[k], v) for k, v in ddp[1].items())
    # stage 2 really trained layer 0 (frozen in stage 1): it moved, identically on both ranks
    init = tiny_llama(ddp[1]['lm_head.weight'].shape[0], 2, seed=1).state_dict()  # the worker's student before training
    k = 'model.layers.0.mlp.up_proj.weight'
    assert not torch.equal(init[k], ddp[1][k])

def test_ddp_hidden_two_processes_equal_one(cache, tmp_path):
    "With the hidden-state term (cached teacher_hidden, mse, a width-32 student with learned projections): 2 ranks == 1 process."
    hid = ['--hidden', 0.5, '--narrow']
    run(['--cache', cache, '--out', tmp_path / 'one', '--batch', 4] + COMMON + hid)
    run(['--cache', cache, '--out', tmp_path / 'ddp', '--batch', 2] + COMMON + hid, torchrun=True)
    one, ddp = results(tmp_path / 'one'), results(tmp_path / 'ddp')
    assert all(e['hidden_loss'] > 0 for e in one[0])
    assert_same(one, ddp, rtol=1e-4, keys=('loss', 'ce_loss', 'kd_loss', 'hidden_loss'))
    w1 = torch.load(tmp_path / 'ddp' / 'weights-rank1.pt')
    assert all(torch.equal(w1[k], v) for k, v in ddp[1].items())                      # projections too: same on both ranks
    init = tiny_model(ddp[1]['lm_head.weight'].shape[0], layers=2, hidden=32, seed=1).state_dict()
    assert len([k for k in one[1] if k.startswith('hidden_projections.')]) == 2
    assert not torch.equal(init['model.layers.0.mlp.up_proj.weight'], one[1]['model.layers.0.mlp.up_proj.weight'])
    assert (tmp_path / 'one' / 'all' / 'checkpoint-7' / 'hidden_projections.pt').is_file()

@pytest.mark.parametrize('kill_at', [5, pytest.param(3, marks=pytest.mark.slow)])
def test_kill_and_resume(cache, full, tmp_path, kill_at):
    "SIGKILL at step 5 (inside stage 2; its checkpoint-4 remains) or 3 (stage 1's last step, before its final checkpoint); the rerun ends like an uninterrupted run."
    args = ['--cache', cache, '--out', tmp_path / 'killed', '--batch', 4] + COMMON
    r = run(args + ['--kill_at', kill_at], check=False)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not (tmp_path / 'killed' / 'history.json').exists()
    run(args)
    resumed = results(tmp_path / 'killed')
    assert full[0][-1]['step'] == resumed[0][-1]['step'] == 7
    assert_same(full, resumed, rtol=1e-5, wtol=1e-5)
